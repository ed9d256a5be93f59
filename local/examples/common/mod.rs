//! What the benchmarks share: their allocator, arguments and percentiles.

/// The allocator `chat-router serve` uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The command-line argument at `position` (1 is the first), or `default` without one.
pub fn arg<T>(position: usize, default: T) -> anyhow::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    Ok(std::env::args()
        .nth(position)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(default))
}

/// The `p`th percentile (0 to 100) of ascending values, by nearest rank; NaN for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

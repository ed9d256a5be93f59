//! Signing deliveries, and checking a signature as a receiver does.
//!
//! The header is `X-Chat-Router-Signature: t=<unix seconds>,v1=<hex>`, where the hex
//! is HMAC-SHA256, keyed with the business's signing secret (its whole text,
//! `whsec_` prefix included), of the timestamp, a full stop and the raw body bytes.
//! Signing the timestamp with the body lets a receiver refuse old deliveries
//! replayed by someone who recorded them. The scheme is Stripe's, so receivers'
//! existing habits and libraries carry over: several `v1` values may appear (one per
//! secret while a secret is being rotated), and keys other than `t` and `v1` are
//! ignored so that later schemes can be added beside this one.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The header carrying the timestamp and signatures.
pub const SIGNATURE_HEADER: &str = "X-Chat-Router-Signature";

/// The header carrying the delivery's id: the same on every retry of one delivery,
/// so a receiver can drop duplicates.
pub const DELIVERY_HEADER: &str = "X-Chat-Router-Delivery";

/// How far a signature's timestamp may be from the receiver's clock, either way.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Length of one HMAC-SHA256 value.
const MAC_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The header does not have the expected shape.
    #[error("malformed signature header: {0}")]
    Malformed(&'static str),
    /// No `v1` value is the body's signature under this secret.
    #[error("signature mismatch: the body was not signed with this secret")]
    Mismatch,
    /// The signature is right but its timestamp is too far from now: a replay, or
    /// a clock that is wrong.
    #[error(
        "timestamp {timestamp} is {} seconds from now ({now}), beyond the tolerance of \
         {tolerance} seconds",
        distance(.timestamp, .now)
    )]
    OutOfTolerance {
        /// The signed timestamp, in Unix seconds.
        timestamp: i64,
        /// The receiver's clock, in Unix seconds.
        now: i64,
        /// The tolerance it was checked against, in seconds.
        tolerance: u64,
    },
}

/// A parsed signature header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    /// `t`: when the delivery was signed, in Unix seconds.
    pub timestamp: i64,
    /// Every `v1` value, in the order given.
    pub signatures: Vec<[u8; MAC_LEN]>,
}

impl SignatureHeader {
    /// Parses `t=<seconds>,v1=<hex>[,v1=<hex>...]`.
    ///
    /// Items are comma-separated `key=value` pairs in any order, with optional spaces
    /// around each. Exactly one `t`, a decimal integer, and at least one `v1`, 64 hex
    /// digits each, are required; other keys are ignored.
    pub fn parse(header: &str) -> Result<SignatureHeader, VerifyError> {
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for item in header.split(',') {
            let (key, value) = item
                .trim()
                .split_once('=')
                .ok_or(VerifyError::Malformed("every item must be key=value"))?;
            match key {
                "t" => {
                    if timestamp.is_some() {
                        return Err(VerifyError::Malformed("more than one t"));
                    }
                    // `i64::from_str` takes a leading `+`; a strict parser does not.
                    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(VerifyError::Malformed("t must be whole Unix seconds"));
                    }
                    timestamp = Some(
                        value
                            .parse::<i64>()
                            .map_err(|_| VerifyError::Malformed("t is out of range"))?,
                    );
                }
                "v1" => {
                    let mut signature = [0u8; MAC_LEN];
                    hex::decode_to_slice(value, &mut signature)
                        .map_err(|_| VerifyError::Malformed("v1 must be 64 hex digits"))?;
                    signatures.push(signature);
                }
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or(VerifyError::Malformed("no t"))?;
        if signatures.is_empty() {
            return Err(VerifyError::Malformed("no v1"));
        }
        Ok(SignatureHeader {
            timestamp,
            signatures,
        })
    }
}

/// The `X-Chat-Router-Signature` value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body))
    )
}

/// Checks a signature header as a receiver should: one of its `v1` values must be
/// the body's signature under `secret`, and its timestamp within `tolerance` of
/// `now` (Unix seconds), in the past or the future.
///
/// Signatures are compared in constant time, so a caller cannot learn a valid one
/// byte by byte from how long refusals take.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let header = SignatureHeader::parse(header)?;
    let expected = mac(secret, header.timestamp, body);

    // Every candidate is compared, without stopping at the first match.
    let matched = header
        .signatures
        .iter()
        .fold(subtle::Choice::from(0), |found, candidate| {
            found | expected[..].ct_eq(&candidate[..])
        });
    if !bool::from(matched) {
        return Err(VerifyError::Mismatch);
    }

    if header.timestamp.abs_diff(now) > tolerance.as_secs() {
        return Err(VerifyError::OutOfTolerance {
            timestamp: header.timestamp,
            now,
            tolerance: tolerance.as_secs(),
        });
    }
    Ok(())
}

/// Seconds between two Unix times, for the error message.
fn distance(a: &i64, b: &i64) -> u64 {
    a.abs_diff(*b)
}

/// HMAC-SHA256 of `"<timestamp>.<body>"`.
fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> [u8; MAC_LEN] {
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_sQedv1JgI_6tIuWv2xTpbg2GlUY9x5VRo4doq5VpXaY";
    const T: i64 = 1_767_225_600;

    #[test]
    fn signs_the_worked_example_of_the_docs() {
        // The same vector as docs/callbacks.md, which shows how to reproduce it with
        // openssl; a change here is a change to what every receiver checks.
        let body = concat!(
            r#"{"event":"message","deliveryId":"5b0c3c52-2f1e-4d8a-9a43-0e8f2f6c1d7a","#,
            r#""businessId":"0f5e7a9c-3b61-4c2e-8d4f-1a2b3c4d5e6f","#,
            r#""conversationId":"9d7c6b5a-4e3f-4a1b-9c8d-7e6f5a4b3c2d","#,
            r#""customerId":"cust-42","message":{"id":"e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a5b","#,
            r#""sender":"agent","content":"Your refund is on its way.","sequence":2,"#,
            r#""createdAt":"2025-12-31T23:59:58.000+00:00"}}"#,
        );
        let header = sign(SECRET, T, body.as_bytes());
        assert_eq!(
            header,
            "t=1767225600,\
             v1=2ca0e4ea3d26228e4f5b4e6fee7bcb2f10a7cf6f094213c833afffc62341ddf8"
        );
        assert_eq!(
            verify(SECRET, &header, body.as_bytes(), T + 60, DEFAULT_TOLERANCE),
            Ok(())
        );
    }

    #[test]
    fn a_signature_verifies_within_the_tolerance_either_way() {
        let header = sign(SECRET, T, b"{}");
        for now in [T, T - 300, T + 300] {
            assert_eq!(
                verify(SECRET, &header, b"{}", now, DEFAULT_TOLERANCE),
                Ok(())
            );
        }
        for now in [T - 301, T + 301] {
            assert!(
                matches!(
                    verify(SECRET, &header, b"{}", now, DEFAULT_TOLERANCE),
                    Err(VerifyError::OutOfTolerance { timestamp: T, .. })
                ),
                "now = {now}"
            );
        }
        let wide = Duration::from_secs(3600);
        assert_eq!(verify(SECRET, &header, b"{}", T + 3600, wide), Ok(()));
    }

    #[test]
    fn another_body_timestamp_or_secret_does_not_verify() {
        let header = sign(SECRET, T, b"{\"a\":1}");
        let check = |secret: &[u8], header: &str, body: &[u8]| {
            verify(secret, header, body, T, DEFAULT_TOLERANCE)
        };
        assert_eq!(check(SECRET, &header, b"{\"a\":1}"), Ok(()));
        assert_eq!(
            check(SECRET, &header, b"{\"a\":2}"),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check(b"whsec_other", &header, b"{\"a\":1}"),
            Err(VerifyError::Mismatch)
        );

        // Moving the signature to another timestamp breaks it.
        let moved = header.replace("t=1767225600", "t=1767225601");
        assert_eq!(
            check(SECRET, &moved, b"{\"a\":1}"),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn any_v1_may_match_in_any_order_and_unknown_keys_are_ignored() {
        let good = sign(SECRET, T, b"x");
        let good_v1 = good.split_once(",v1=").unwrap().1;
        let other_v1 = "0".repeat(64);
        for header in [
            format!("v1={good_v1},t={T}"),
            format!("t={T},v1={other_v1},v1={good_v1}"),
            format!("t={T},v1={good_v1},v1={other_v1}"),
            format!("v0=abc,t={T},scheme=future,v1={good_v1}"),
            format!("t={T}, v1={good_v1}"),
        ] {
            assert_eq!(
                verify(SECRET, &header, b"x", T, DEFAULT_TOLERANCE),
                Ok(()),
                "{header}"
            );
        }
        assert_eq!(
            verify(
                SECRET,
                &format!("t={T},v1={other_v1}"),
                b"x",
                T,
                DEFAULT_TOLERANCE
            ),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn malformed_headers_are_refused_before_any_comparison() {
        let v1 = "ab".repeat(32);
        for header in [
            String::new(),
            "garbage".into(),
            format!("v1={v1}"),
            format!("t={T}"),
            format!("t={T},v1="),
            format!("t={T},v1={}", &v1[..62]),
            format!("t={T},v1={v1}00"),
            format!("t={T},v1={}", "zz".repeat(32)),
            format!("t=,v1={v1}"),
            format!("t=-5,v1={v1}"),
            format!("t=+5,v1={v1}"),
            format!("t=1.5,v1={v1}"),
            format!("t=99999999999999999999,v1={v1}"),
            format!("t={T},t={T},v1={v1}"),
            format!("t={T},,v1={v1}"),
            format!("t={T};v1={v1}"),
        ] {
            assert!(
                matches!(
                    SignatureHeader::parse(&header),
                    Err(VerifyError::Malformed(_))
                ),
                "{header:?} parsed"
            );
            assert!(matches!(
                verify(SECRET, &header, b"", T, DEFAULT_TOLERANCE),
                Err(VerifyError::Malformed(_))
            ));
        }
    }

    #[test]
    fn parses_the_timestamp_and_every_signature() {
        let a = "01".repeat(32);
        let b = "FF".repeat(32);
        let parsed = SignatureHeader::parse(&format!("t=42,v1={a},v1={b}")).unwrap();
        assert_eq!(parsed.timestamp, 42);
        assert_eq!(parsed.signatures, vec![[1u8; 32], [255u8; 32]]);
    }
}

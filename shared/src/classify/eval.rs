//! Offline evaluation of the embedded classifier on a labelled CSV.
//!
//! Loads `text,category` rows (header required), optionally maps categories
//! (intents) to departments with a JSON file, splits the data into stratified
//! folds (or uses a separate test set), optionally keeps only `shots`
//! training examples per category, trains, and reports accuracy, macro-F1,
//! the most confused intent pairs, training time and per-message latency.

use super::embedded::{Department, EmbeddedModel, Intent, SplitMix64, TrainConfig, TrainingSet};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Instant;

/// One labelled message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabeledExample {
    /// Message text.
    pub text: String,
    /// Gold intent (category) name.
    pub category: String,
}

/// Errors of loading evaluation data or of invalid options.
#[derive(Debug)]
pub enum EvalError {
    /// A file could not be read.
    Io {
        /// Path of the file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Malformed CSV.
    Csv {
        /// 1-based line where the problem was found.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Malformed departments JSON.
    Json(String),
    /// Options or data that cannot be evaluated (e.g. too few rows for the
    /// folds, a category missing from the departments mapping).
    Invalid(String),
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::Io { path, source } => write!(f, "cannot read {path}: {source}"),
            EvalError::Csv { line, message } => write!(f, "CSV line {line}: {message}"),
            EvalError::Json(m) => write!(f, "departments JSON: {m}"),
            EvalError::Invalid(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for EvalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EvalError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// How the data is split into training and test parts.
#[derive(Debug, Clone)]
pub enum Split {
    /// Stratified K-fold cross-validation over the data.
    Folds(usize),
    /// Train on all the data, test on these examples.
    Test(Vec<LabeledExample>),
}

/// Evaluation options.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// How to split.
    pub split: Split,
    /// Keep only this many (seeded, random) training examples per category.
    pub shots: Option<usize>,
    /// Seed of the fold assignment and of the shots sample.
    pub seed: u64,
    /// Number of most-confused pairs to report.
    pub top_confused: usize,
    /// Classifier hyper-parameters.
    pub config: TrainConfig,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            split: Split::Folds(5),
            shots: None,
            seed: 42,
            top_confused: 10,
            config: TrainConfig::default(),
        }
    }
}

/// A frequent intent confusion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusedPair {
    /// Gold intent.
    pub expected: String,
    /// Predicted intent.
    pub predicted: String,
    /// Number of test messages with this confusion.
    pub count: usize,
}

/// Result of an evaluation. Figures over folds are pooled over all test
/// predictions; `train_ms` is the mean per training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Fraction of test messages whose intent (category) was right.
    pub intent_accuracy: f64,
    /// Fraction whose department was right.
    pub department_accuracy: f64,
    /// Unweighted mean of per-intent F1 over intents seen in gold or
    /// predictions.
    pub macro_f1: f64,
    /// Mean wall-clock training time per model, milliseconds.
    pub train_ms: f64,
    /// Mean single-message classification latency, microseconds.
    pub latency_us_mean: f64,
    /// Median single-message classification latency, microseconds.
    pub latency_us_p50: f64,
    /// 99th-percentile single-message latency, microseconds.
    pub latency_us_p99: f64,
    /// Training examples per model (mean over folds, rounded).
    pub n_train: usize,
    /// Test predictions in total (all folds).
    pub n_test: usize,
    /// Number of folds (1 with a separate test set).
    pub folds: usize,
    /// Training examples per category, if limited.
    pub shots: Option<usize>,
    /// Seed used.
    pub seed: u64,
    /// Distinct intents in the data.
    pub n_intents: usize,
    /// Distinct departments in the data.
    pub n_departments: usize,
    /// Mean confidence of the predictions.
    pub mean_confidence: f64,
    /// Expected calibration error of the confidence (10 equal-width bins).
    pub ece: f64,
    /// Most frequent intent confusions, most frequent first.
    pub confused: Vec<ConfusedPair>,
}

/// Parses a `text,category` CSV (RFC 4180 quoting, header row required;
/// extra columns are ignored, the two are found by header name).
pub fn parse_csv(content: &str) -> Result<Vec<LabeledExample>, EvalError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(content.as_bytes());
    let csv_error = |err: csv::Error| EvalError::Csv {
        line: err.position().map_or(0, |p| p.line() as usize),
        message: err.to_string(),
    };
    let header = reader.headers().map_err(csv_error)?.clone();
    let col = |name: &str| {
        header.iter().position(|h| {
            h.trim()
                .trim_start_matches('\u{feff}')
                .eq_ignore_ascii_case(name)
        })
    };
    let (Some(ti), Some(ci)) = (col("text"), col("category")) else {
        return Err(EvalError::Csv {
            line: 1,
            message: format!("header must have `text` and `category` columns, got {header:?}"),
        });
    };
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let (Some(text), Some(category)) = (record.get(ti), record.get(ci)) else {
            return Err(EvalError::Csv {
                line,
                message: format!(
                    "expected at least {} fields, got {}",
                    ti.max(ci) + 1,
                    record.len()
                ),
            });
        };
        if category.trim().is_empty() {
            return Err(EvalError::Csv {
                line,
                message: "empty category".into(),
            });
        }
        out.push(LabeledExample {
            text: text.to_owned(),
            category: category.trim().to_owned(),
        });
    }
    Ok(out)
}

/// Reads and parses a `text,category` CSV file.
pub fn load_csv(path: &Path) -> Result<Vec<LabeledExample>, EvalError> {
    let content = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_csv(&content)
}

/// Parses a departments mapping into `category -> department`.
///
/// Accepted format (Banking77's `departments.json`):
/// `{"department": ["category", ...], ...}`. The inverse form
/// `{"category": "department", ...}` is accepted too.
pub fn parse_departments(json: &str) -> Result<BTreeMap<String, String>, EvalError> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| EvalError::Json(e.to_string()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| EvalError::Json("expected a JSON object".into()))?;
    let mut map = BTreeMap::new();
    for (key, v) in obj {
        match v {
            serde_json::Value::Array(items) => {
                for item in items {
                    let cat = item.as_str().ok_or_else(|| {
                        EvalError::Json(format!("department {key:?}: categories must be strings"))
                    })?;
                    if let Some(prev) = map.insert(cat.to_string(), key.clone())
                        && prev != *key
                    {
                        return Err(EvalError::Json(format!(
                            "category {cat:?} is in both {prev:?} and {key:?}"
                        )));
                    }
                }
            }
            serde_json::Value::String(dep) => {
                map.insert(key.clone(), dep.clone());
            }
            _ => {
                return Err(EvalError::Json(format!(
                    "{key:?}: expected a list of categories or a department name"
                )));
            }
        }
    }
    Ok(map)
}

/// Reads and parses a departments JSON file.
pub fn load_departments(path: &Path) -> Result<BTreeMap<String, String>, EvalError> {
    let content = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_departments(&content)
}

/// Department of a category: the mapping's, or the category itself when
/// there is no mapping.
fn department_of<'a>(
    category: &'a str,
    departments: Option<&'a BTreeMap<String, String>>,
) -> &'a str {
    departments
        .and_then(|m| m.get(category))
        .map(String::as_str)
        .unwrap_or(category)
}

/// Builds a [`TrainingSet`] from labelled examples. With a mapping, each
/// category is an intent of its department; without, each category is a
/// department of its own (department-only training).
pub fn build_training_set(
    examples: &[&LabeledExample],
    departments: Option<&BTreeMap<String, String>>,
) -> TrainingSet {
    let mut by_cat: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for e in examples {
        by_cat.entry(&e.category).or_default().push(e.text.clone());
    }
    match departments {
        Some(map) => {
            let deps: BTreeSet<&str> = by_cat.keys().map(|c| department_of(c, Some(map))).collect();
            TrainingSet {
                departments: deps
                    .into_iter()
                    .map(|d| Department {
                        name: d.to_string(),
                        description: String::new(),
                        examples: Vec::new(),
                    })
                    .collect(),
                intents: by_cat
                    .into_iter()
                    .map(|(c, ex)| Intent {
                        name: c.to_string(),
                        department: department_of(c, Some(map)).to_string(),
                        examples: ex,
                    })
                    .collect(),
            }
        }
        None => TrainingSet {
            departments: by_cat
                .into_iter()
                .map(|(c, ex)| Department {
                    name: c.to_string(),
                    description: String::new(),
                    examples: ex,
                })
                .collect(),
            intents: Vec::new(),
        },
    }
}

/// Assigns each example a fold in `0..k`, stratified by category.
fn stratified_folds(data: &[LabeledExample], k: usize, seed: u64) -> Vec<usize> {
    let mut by_cat: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in data.iter().enumerate() {
        by_cat.entry(&e.category).or_default().push(i);
    }
    let mut rng = SplitMix64::new(seed);
    let mut fold = vec![0; data.len()];
    // Rotating the starting fold per category spreads the remainders, so
    // fold sizes differ by at most a few examples overall.
    let mut offset = 0;
    for idx in by_cat.values_mut() {
        rng.shuffle(idx);
        for (j, &i) in idx.iter().enumerate() {
            fold[i] = (offset + j) % k;
        }
        offset = (offset + idx.len()) % k;
    }
    fold
}

/// Keeps at most `shots` examples per category (seeded random sample,
/// returned in original order).
fn sample_shots(train: Vec<&LabeledExample>, shots: usize, seed: u64) -> Vec<&LabeledExample> {
    let mut by_cat: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in train.iter().enumerate() {
        by_cat.entry(&e.category).or_default().push(i);
    }
    let mut rng = SplitMix64::new(seed ^ 0x5407_5A3B);
    let mut keep = vec![false; train.len()];
    for idx in by_cat.values_mut() {
        rng.shuffle(idx);
        for &i in idx.iter().take(shots) {
            keep[i] = true;
        }
    }
    train
        .into_iter()
        .zip(keep)
        .filter_map(|(e, k)| k.then_some(e))
        .collect()
}

/// One test prediction, kept for the metrics.
struct Outcome {
    gold: String,
    pred: String,
    gold_dep: String,
    pred_dep: String,
    confidence: f32,
}

/// Runs the evaluation described by `options` on `data`.
pub fn evaluate(
    data: &[LabeledExample],
    departments: Option<&BTreeMap<String, String>>,
    options: &EvalOptions,
) -> Result<EvalReport, EvalError> {
    if data.is_empty() {
        return Err(EvalError::Invalid("no labelled examples".into()));
    }
    if let Some(map) = departments {
        let missing: BTreeSet<&str> = data
            .iter()
            .map(|e| e.category.as_str())
            .chain(match &options.split {
                Split::Test(t) => t.iter().map(|e| e.category.as_str()).collect::<Vec<_>>(),
                Split::Folds(_) => Vec::new(),
            })
            .filter(|c| !map.contains_key(*c))
            .collect();
        if !missing.is_empty() {
            return Err(EvalError::Invalid(format!(
                "categories missing from the departments mapping: {missing:?}"
            )));
        }
    }

    // (train, test) pairs.
    let runs: Vec<(Vec<&LabeledExample>, Vec<&LabeledExample>)> = match &options.split {
        Split::Folds(k) => {
            let k = *k;
            if k < 2 || k > data.len() {
                return Err(EvalError::Invalid(format!(
                    "--folds must be between 2 and the number of rows ({}), got {k}",
                    data.len()
                )));
            }
            let fold = stratified_folds(data, k, options.seed);
            (0..k)
                .map(|f| {
                    let (test, train): (Vec<_>, Vec<_>) =
                        data.iter().zip(&fold).partition(|(_, fi)| **fi == f);
                    (
                        train.into_iter().map(|(e, _)| e).collect(),
                        test.into_iter().map(|(e, _)| e).collect(),
                    )
                })
                .collect()
        }
        Split::Test(test) => {
            if test.is_empty() {
                return Err(EvalError::Invalid("the test set is empty".into()));
            }
            vec![(data.iter().collect(), test.iter().collect())]
        }
    };

    let mut outcomes = Vec::new();
    let mut latencies_ns: Vec<u128> = Vec::new();
    let mut train_ms_total = 0.0;
    let mut n_train_total = 0;
    let n_runs = runs.len();
    for (run, (train, test)) in runs.into_iter().enumerate() {
        let train = match options.shots {
            Some(n) => sample_shots(train, n, options.seed.wrapping_add(run as u64)),
            None => train,
        };
        n_train_total += train.len();
        let set = build_training_set(&train, departments);
        let t0 = Instant::now();
        let model = EmbeddedModel::train_with(&set, &options.config);
        train_ms_total += t0.elapsed().as_secs_f64() * 1e3;
        for e in test {
            let t = Instant::now();
            let p = model.classify(&e.text);
            latencies_ns.push(t.elapsed().as_nanos());
            // Department-only models have no intents: the department is the
            // predicted category.
            let pred = p.intent.clone().unwrap_or_else(|| p.department.clone());
            outcomes.push(Outcome {
                gold: e.category.clone(),
                gold_dep: department_of(&e.category, departments).to_string(),
                pred,
                pred_dep: p.department,
                confidence: p.confidence,
            });
        }
    }

    let n = outcomes.len() as f64;
    let intent_ok = outcomes.iter().filter(|o| o.gold == o.pred).count();
    let dep_ok = outcomes.iter().filter(|o| o.gold_dep == o.pred_dep).count();
    latencies_ns.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies_ns.len() as f64 - 1.0) * p).round() as usize;
        latencies_ns.get(i).map_or(0.0, |&ns| ns as f64 / 1e3)
    };

    // Confusions, most frequent first, ties by name for determinism.
    let mut pairs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.gold != o.pred) {
        *pairs.entry((&o.gold, &o.pred)).or_default() += 1;
    }
    let mut confused: Vec<ConfusedPair> = pairs
        .into_iter()
        .map(|((e, p), count)| ConfusedPair {
            expected: e.to_string(),
            predicted: p.to_string(),
            count,
        })
        .collect();
    // Stable sort: equal counts keep their (alphabetical) order.
    confused.sort_by_key(|c| std::cmp::Reverse(c.count));
    confused.truncate(options.top_confused);

    let intents: BTreeSet<&str> = data.iter().map(|e| e.category.as_str()).collect();
    let deps: BTreeSet<&str> = intents
        .iter()
        .map(|c| department_of(c, departments))
        .collect();

    Ok(EvalReport {
        intent_accuracy: intent_ok as f64 / n,
        department_accuracy: dep_ok as f64 / n,
        macro_f1: macro_f1(&outcomes),
        train_ms: train_ms_total / n_runs as f64,
        latency_us_mean: latencies_ns.iter().sum::<u128>() as f64
            / latencies_ns.len().max(1) as f64
            / 1e3,
        latency_us_p50: pct(0.5),
        latency_us_p99: pct(0.99),
        n_train: (n_train_total as f64 / n_runs as f64).round() as usize,
        n_test: outcomes.len(),
        folds: n_runs,
        shots: options.shots,
        seed: options.seed,
        n_intents: intents.len(),
        n_departments: deps.len(),
        mean_confidence: outcomes
            .iter()
            .map(|o| f64::from(o.confidence))
            .sum::<f64>()
            / n,
        ece: expected_calibration_error(&outcomes),
        confused,
    })
}

/// Macro-averaged F1 over every label seen in gold or predictions.
fn macro_f1(outcomes: &[Outcome]) -> f64 {
    let mut counts: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new(); // tp, fp, fn
    for o in outcomes {
        if o.gold == o.pred {
            counts.entry(&o.gold).or_default().0 += 1;
        } else {
            counts.entry(&o.pred).or_default().1 += 1;
            counts.entry(&o.gold).or_default().2 += 1;
        }
    }
    if counts.is_empty() {
        return 0.0;
    }
    let sum: f64 = counts
        .values()
        .map(|&(tp, fp, fne)| {
            let denom = 2 * tp + fp + fne;
            if denom == 0 {
                0.0
            } else {
                2.0 * tp as f64 / denom as f64
            }
        })
        .sum();
    sum / counts.len() as f64
}

/// Expected calibration error of the intent confidence, 10 equal bins.
fn expected_calibration_error(outcomes: &[Outcome]) -> f64 {
    let mut bins = [(0usize, 0.0f64, 0usize); 10]; // count, sum conf, correct
    for o in outcomes {
        let b = ((o.confidence * 10.0) as usize).min(9);
        bins[b].0 += 1;
        bins[b].1 += f64::from(o.confidence);
        bins[b].2 += usize::from(o.gold == o.pred);
    }
    let n = outcomes.len().max(1) as f64;
    bins.iter()
        .filter(|b| b.0 > 0)
        .map(|&(c, s, ok)| (c as f64 / n) * (s / c as f64 - ok as f64 / c as f64).abs())
        .sum()
}

/// Renders a report as a human-readable text table.
pub fn render_report(r: &EvalReport) -> String {
    use fmt::Write;
    let mut s = String::new();
    let split = if r.folds > 1 {
        format!("{}-fold stratified CV", r.folds)
    } else {
        "separate test set".to_string()
    };
    let shots = r.shots.map_or("all".to_string(), |n| n.to_string());
    let rows: Vec<(&str, String)> = vec![
        ("split", format!("{split}, seed {}", r.seed)),
        ("shots per intent", shots),
        (
            "intents / departments",
            format!("{} / {}", r.n_intents, r.n_departments),
        ),
        ("n_train (per model)", r.n_train.to_string()),
        ("n_test (total)", r.n_test.to_string()),
        (
            "intent accuracy",
            format!("{:.2}%", r.intent_accuracy * 100.0),
        ),
        (
            "department accuracy",
            format!("{:.2}%", r.department_accuracy * 100.0),
        ),
        ("macro-F1 (intents)", format!("{:.4}", r.macro_f1)),
        ("mean confidence", format!("{:.3}", r.mean_confidence)),
        ("calibration error (ECE)", format!("{:.3}", r.ece)),
        ("train time (per model)", format!("{:.0} ms", r.train_ms)),
        ("latency mean", format!("{:.1} µs", r.latency_us_mean)),
        ("latency p50", format!("{:.1} µs", r.latency_us_p50)),
        ("latency p99", format!("{:.1} µs", r.latency_us_p99)),
    ];
    let w = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    for (k, v) in rows {
        let _ = writeln!(s, "{k:<w$}  {v}");
    }
    if !r.confused.is_empty() {
        let _ = writeln!(s, "\nmost confused (expected -> predicted):");
        let we = r
            .confused
            .iter()
            .map(|c| c.expected.chars().count())
            .max()
            .unwrap_or(0);
        for c in &r.confused {
            let _ = writeln!(
                s,
                "  {:>4}  {:<we$} -> {}",
                c.count, c.expected, c.predicted
            );
        }
    }
    s
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render_report(self))
    }
}

#[cfg(test)]
mod tests {
    use super::super::embedded::TEST_FIXTURE_DIR;
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(TEST_FIXTURE_DIR)
            .join(name)
    }

    #[test]
    fn csv_parsing_handles_quotes_and_errors() {
        let rows = parse_csv(
            "text,category\n\"hello, \"\"world\"\"\",greet\n\"two\nlines\",multi\r\nplain,x\n\n",
        )
        .expect("valid CSV");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].text, "hello, \"world\"");
        assert_eq!(rows[1].text, "two\nlines");
        assert_eq!(rows[2].category, "x");
        // Columns are found by name.
        let rows = parse_csv("category,text\ngreet,hi\n").expect("valid CSV");
        assert_eq!(rows[0].text, "hi");

        assert!(parse_csv("").is_err());
        assert!(parse_csv("foo,bar\na,b\n").is_err());
        assert!(parse_csv("text,category\n\"unterminated,x\n").is_err());
        assert!(parse_csv("text,category\nonly-one-field\n").is_err());
    }

    #[test]
    fn departments_json_both_forms() {
        let m = parse_departments(r#"{"cards": ["a", "b"], "exchange": ["c"]}"#).expect("valid");
        assert_eq!(m["a"], "cards");
        assert_eq!(m["c"], "exchange");
        let m = parse_departments(r#"{"a": "cards"}"#).expect("valid");
        assert_eq!(m["a"], "cards");
        assert!(parse_departments(r#"{"x": ["a"], "y": ["a"]}"#).is_err());
        assert!(parse_departments("[1, 2]").is_err());
        assert!(parse_departments(r#"{"x": 3}"#).is_err());
    }

    #[test]
    fn folds_are_stratified_and_seeded() {
        let data: Vec<LabeledExample> = (0..60)
            .map(|i| LabeledExample {
                text: format!("t{i}"),
                category: format!("c{}", i % 3),
            })
            .collect();
        let a = stratified_folds(&data, 5, 7);
        assert_eq!(a, stratified_folds(&data, 5, 7));
        assert_ne!(a, stratified_folds(&data, 5, 8));
        for f in 0..5 {
            for c in 0..3 {
                let n = (0..60).filter(|&i| a[i] == f && i % 3 == c).count();
                assert_eq!(n, 4, "fold {f} class {c}");
            }
        }
        let refs: Vec<&LabeledExample> = data.iter().collect();
        let sampled = sample_shots(refs, 2, 1);
        assert_eq!(sampled.len(), 6);
    }

    #[test]
    fn metrics_are_correct_on_a_toy_case() {
        let o = |g: &str, p: &str| Outcome {
            gold: g.into(),
            pred: p.into(),
            gold_dep: String::new(),
            pred_dep: String::new(),
            confidence: 1.0,
        };
        // a: tp 1, fn 1 -> F1 2/3; b: tp 1, fp 1 -> F1 2/3.
        let outcomes = [o("a", "a"), o("a", "b"), o("b", "b")];
        assert!((macro_f1(&outcomes) - 2.0 / 3.0).abs() < 1e-9);
        // All at confidence 1 with 2/3 correct.
        assert!((expected_calibration_error(&outcomes) - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn evaluation_on_fixture_meets_floor() {
        let data = load_csv(&fixture("banking77-subset.csv")).expect("fixture CSV");
        let deps = load_departments(&fixture("banking77-departments.json")).expect("fixture JSON");
        assert_eq!(data.len(), 77 * 15);
        let options = EvalOptions {
            split: Split::Folds(3),
            seed: 42,
            ..EvalOptions::default()
        };
        let report = evaluate(&data, Some(&deps), &options).expect("evaluation runs");
        assert_eq!(report.n_test, data.len());
        assert_eq!(report.n_train, 770);
        assert_eq!((report.n_intents, report.n_departments), (77, 6));
        // Measured 0.732 intent / 0.900 department accuracy and 0.728
        // macro-F1 (3-fold, seed 42); the floors leave about five points.
        assert!(report.intent_accuracy >= 0.68, "{report}");
        assert!(report.department_accuracy >= 0.84, "{report}");
        assert!(report.macro_f1 >= 0.67, "{report}");
        assert!(report.confused.len() <= options.top_confused);
        assert!(report.confused.windows(2).all(|w| w[0].count >= w[1].count));
        let text = render_report(&report);
        assert!(text.contains("intent accuracy") && text.contains("latency p99"));
        let json = serde_json::to_value(&report).expect("serialisable");
        for key in [
            "intent_accuracy",
            "department_accuracy",
            "macro_f1",
            "train_ms",
            "latency_us_p50",
            "latency_us_p99",
            "n_train",
            "n_test",
            "confused",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }

        // Same data as a separate test set, with shots and no mapping.
        let options = EvalOptions {
            split: Split::Test(data[..100].to_vec()),
            shots: Some(3),
            ..EvalOptions::default()
        };
        let report = evaluate(&data, None, &options).expect("evaluation runs");
        assert_eq!((report.n_train, report.n_test, report.folds), (231, 100, 1));
        assert_eq!(report.intent_accuracy, report.department_accuracy);
    }

    #[test]
    fn invalid_options_are_errors() {
        let data = vec![LabeledExample {
            text: "hi".into(),
            category: "x".into(),
        }];
        let folds = |k| EvalOptions {
            split: Split::Folds(k),
            ..EvalOptions::default()
        };
        assert!(evaluate(&data, None, &folds(5)).is_err());
        assert!(evaluate(&[], None, &folds(2)).is_err());
        let mut deps = BTreeMap::new();
        deps.insert("y".to_string(), "d".to_string());
        assert!(evaluate(&data, Some(&deps), &folds(1)).is_err());
    }
}

//! Embedded, pure-Rust intent classifier trained in-process.
//!
//! The model is deliberately classic so that it trains in about a second on
//! ten thousand messages, needs no downloaded weights and is bit-for-bit
//! deterministic:
//!
//! * **Features**: lowercased, Unicode-aware words (runs of alphanumeric
//!   characters; apostrophes are dropped so "don't" and "dont" match), in
//!   three blocks: word unigrams + bigrams; ordered pairs of words at any
//!   distance, cut to 4-character stems (a cheap stand-in for a quadratic
//!   kernel, worth about +0.6 points on Banking77); and character 1–4-grams
//!   inside space-padded words (like scikit-learn's `char_wb`), which make
//!   the model robust to typos, inflections and scripts without spaces
//!   (Chinese is one long "word" whose n-grams still carry meaning). Features
//!   are hashed to 64 bits and looked up in a vocabulary built from the
//!   training set; input is truncated to a bounded number of characters.
//! * **Weighting**: sublinear TF-IDF; each block is L2-normalised separately
//!   and then weighted, so no block dominates just because it has more
//!   features. Unknown features count in the norm, so mostly-unknown text
//!   gets small margins.
//! * **Classifier**: one-vs-rest linear SVM (squared hinge loss) trained with
//!   liblinear's dual coordinate descent with shrinking, eight classes at a
//!   time (SIMD-friendly), on at most two threads; then a mean-centred
//!   nearest-centroid term is folded into the weights (helps few-shot).
//!   Each class name ("card_not_working" -> "card not working") is used as
//!   one extra training example.
//! * **Few-shot regime**: when classes have few examples (at most
//!   [`TrainConfig::few_shot_max_per_class`] on average), the IDF is computed
//!   over classes rather than texts, word bigrams are dropped and the
//!   character block weighs more (about +1.4 points at 10 shots per intent
//!   on Banking77); with more data the settings above are better.
//! * **Confidence**: a softmax over the margins plus a "background" logit
//!   (the "none of these" class), with a temperature fitted on approximate
//!   leave-one-out margins of the training set. The background logit is what
//!   makes text that no class claims (every margin low) come out with low
//!   confidence instead of a confident guess among the known classes.
//!
//! When the training set has intents the model predicts intents and derives
//! the department; departments without any intent become classes of their own
//! (with `intent: None`), which also covers the department-only case.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A department of a tenant: where a message is routed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Department {
    /// Unique department name, returned in [`Prediction::department`].
    pub name: String,
    /// Free-text description; used as an extra training example when the
    /// department has no intents.
    #[serde(default)]
    pub description: String,
    /// Example customer messages for this department.
    #[serde(default)]
    pub examples: Vec<String>,
}

/// A fine-grained intent that belongs to one department.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// Unique intent name, returned in [`Prediction::intent`].
    pub name: String,
    /// Name of the [`Department`] this intent routes to. An unknown name
    /// creates that department implicitly rather than failing training.
    pub department: String,
    /// Example customer messages for this intent.
    #[serde(default)]
    pub examples: Vec<String>,
}

/// Everything the classifier is trained from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingSet {
    /// The tenant's departments.
    #[serde(default)]
    pub departments: Vec<Department>,
    /// Optional intents; when present the model predicts intents.
    #[serde(default)]
    pub intents: Vec<Intent>,
}

/// The result of classifying one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Predicted department name (empty only for a model with no classes).
    pub department: String,
    /// Predicted intent, when the model was trained with intents and the
    /// winning class is an intent.
    pub intent: Option<String>,
    /// Calibrated confidence in `[0, 1]`; below 0.5 means no class really
    /// claims the message (unrelated, empty or ambiguous text).
    pub confidence: f32,
}

/// Loss of the one-vs-rest linear SVMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Loss {
    /// Squared hinge (L2-loss SVM, liblinear's default dual solver).
    SquaredHinge,
    /// Plain hinge (L1-loss SVM).
    Hinge,
}

/// Hyper-parameters of feature extraction and training.
///
/// The defaults were tuned on Banking77 with 5-fold cross-validation; most
/// callers should use [`TrainConfig::default`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Whether to add word bigrams to the word unigrams (see also
    /// `few_shot_word_bigrams`).
    pub word_bigrams: bool,
    /// Also pair words up to this far apart (beyond adjacent bigrams);
    /// values below 2 disable it.
    pub word_pair_window: usize,
    /// Words are cut to this many characters for pairs (a crude stemmer);
    /// 0 keeps them whole.
    pub pair_prefix: usize,
    /// Minimum number of training texts a feature must occur in.
    pub min_df: usize,
    /// Use each class name (e.g. `card_not_working` as "card not working")
    /// as one more training example: names are chosen to be meaningful and
    /// help most when there are few examples.
    pub learn_from_names: usize,
    /// Smallest distance between paired words (1 includes adjacent words).
    pub pair_min_gap: usize,
    /// Weight of the nearest-centroid score blended into the SVM margins,
    /// divided by the square root of the mean examples per class; 0
    /// disables it.
    pub centroid_weight: f32,
    /// Smallest character n-gram (inside padded words); 0 disables them.
    pub char_ngram_min: usize,
    /// Largest character n-gram.
    pub char_ngram_max: usize,
    /// Weight of the (separately L2-normalised) word block.
    pub word_weight: f32,
    /// Weight of the (separately L2-normalised) word-pair block.
    pub pair_weight: f32,
    /// Weight of the (separately L2-normalised) character block (see also
    /// `few_shot_char_weight`).
    pub char_weight: f32,
    /// Use `1 + ln(tf)` instead of raw term frequency.
    pub sublinear_tf: bool,
    /// Replace every digit with `0` so amounts and dates generalise.
    pub fold_digits: bool,
    /// SVM regularisation parameter C.
    pub c: f64,
    /// SVM loss.
    pub loss: Loss,
    /// Scale C per class so positives and negatives weigh the same in total
    /// (helps rare classes in one-vs-rest).
    pub balanced: bool,
    /// Value of the constant bias feature (liblinear's `-B`).
    pub bias: f64,
    /// Stopping tolerance of the dual coordinate descent.
    pub eps: f64,
    /// Maximum number of passes over the data per binary problem.
    pub max_iter: usize,
    /// Seed of the coordinate-order shuffles.
    pub seed: u64,
    /// Worker threads for training (each class is independent, so the
    /// result does not depend on this).
    pub threads: usize,
    /// Input is truncated to this many characters before featurisation, which
    /// bounds classification cost on huge inputs.
    pub max_input_chars: usize,
    /// Fit the confidence temperature on the training data; when false, or
    /// when there is too little data, `default_temperature` is used.
    pub calibrate: bool,
    /// Fraction of the leave-one-out correction applied to training margins
    /// when fitting the temperature (1 = the full, pessimistic estimate).
    pub loo_correction: f32,
    /// Margin of the implicit "none of these" class in the confidence
    /// softmax (see also `background_above_bias`).
    pub background_margin: f32,
    /// The background margin is raised to at least the largest bias (the
    /// margin of a featureless text) plus this.
    pub background_above_bias: f32,
    /// Temperature used when calibration is off or impossible.
    pub default_temperature: f32,
    /// Few-shot regime: when classes have at most this many training texts
    /// on average (class names included), the `few_shot_*` settings below
    /// apply. 0 disables them.
    pub few_shot_max_per_class: f32,
    /// Character-block weight in the few-shot regime (replaces
    /// `char_weight`): with a handful of examples, spelling-level evidence
    /// generalises better than whole words.
    pub few_shot_char_weight: f32,
    /// `word_bigrams` in the few-shot regime: bigrams seen in one or two
    /// examples mostly memorise them.
    pub few_shot_word_bigrams: bool,
    /// In the few-shot regime, compute the IDF over classes (each class's
    /// texts pooled into one document) instead of over texts.
    pub few_shot_class_idf: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            word_bigrams: true,
            word_pair_window: 50,
            pair_prefix: 4,
            min_df: 1,
            centroid_weight: 6.0,
            pair_min_gap: 2,
            learn_from_names: 1,
            char_ngram_min: 1,
            char_ngram_max: 4,
            word_weight: 1.0,
            char_weight: 1.0,
            pair_weight: 1.0,
            sublinear_tf: true,
            fold_digits: false,
            c: 1.0,
            loss: Loss::SquaredHinge,
            balanced: false,
            bias: 1.0,
            eps: 0.3,
            max_iter: 200,
            seed: 0x5EED_C1A5_51F1_E500,
            threads: 2,
            max_input_chars: 1000,
            calibrate: true,
            default_temperature: 0.3,
            loo_correction: 0.25,
            background_margin: -0.3,
            background_above_bias: 0.35,
            few_shot_max_per_class: 40.0,
            few_shot_char_weight: 1.5,
            few_shot_word_bigrams: false,
            few_shot_class_idf: true,
        }
    }
}

/// One class of the model: an intent, or a department without intents.
#[derive(Debug, Clone)]
struct ClassLabel {
    department: usize,
    intent: Option<String>,
}

/// Hasher for keys that are already well-mixed 64-bit hashes: passes them
/// through instead of re-hashing with SipHash, which dominates lookup cost.
#[derive(Default, Clone, Copy)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by the vocabulary; fold anything else in so
        // the hasher stays correct if a different key type ever appears.
        for &b in bytes {
            self.0 = mix64(self.0 ^ u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Vocab = HashMap<u64, u32, BuildHasherDefault<PassThroughHasher>>;

/// The model's vocabulary: feature hash to (index, IDF). Keeping the IDF
/// next to the index (an entry is 16 bytes either way) makes a lookup touch
/// one cache line instead of two; with ~130k features both the table and a
/// separate IDF array miss the cache at classification time.
type FeatureIndex = HashMap<u64, (u32, f32), BuildHasherDefault<PassThroughHasher>>;

/// A trained classifier. Cheap to share across threads (`&self` methods only).
#[derive(Clone)]
pub struct EmbeddedModel {
    config: TrainConfig,
    vocab: FeatureIndex,
    /// IDF of each feature, by index (also in `vocab`, for lookups).
    idf: Vec<f32>,
    /// IDF given to features never seen in training: they count in the
    /// vector norm (so mostly-unknown text gets small margins) but have no
    /// weights.
    unknown_idf: f32,
    departments: Vec<String>,
    classes: Vec<ClassLabel>,
    /// Feature-major weights quantised to `i8`: class `k` of feature `f` has
    /// weight `weights[f * n_classes + k] as f32 * scales[f]`. Scoring a
    /// message touches one random row per feature, and the f32 matrix (40 MB
    /// on Banking77) misses the cache on nearly every row; a byte per class
    /// cuts a row from five cache lines to two or three and the matrix to a
    /// size that mostly stays in L3. The rounding error (at most 1/254 of a
    /// row's largest weight) left Banking77 accuracy unchanged, 5-fold and
    /// 10-shot.
    weights: Vec<i8>,
    /// Per-feature scale of `weights` (the row's largest magnitude / 127).
    scales: Vec<f32>,
    biases: Vec<f32>,
    temperature: f32,
    /// Margin of the "none of these" logit in the confidence softmax.
    background: f32,
}

impl std::fmt::Debug for EmbeddedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The vocabulary and weights are far too large to print usefully.
        f.debug_struct("EmbeddedModel")
            .field("departments", &self.departments)
            .field("n_classes", &self.classes.len())
            .field("n_features", &self.idf.len())
            .field("temperature", &self.temperature)
            .finish()
    }
}

/// Score of one class, as returned by [`EmbeddedModel::classify_ranked`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedPrediction {
    /// Department of the class.
    pub department: String,
    /// Intent of the class, if it is an intent.
    pub intent: Option<String>,
    /// Calibrated probability of this class in `[0, 1]`.
    pub confidence: f32,
    /// Raw SVM margin (positive: the class claims the message).
    pub margin: f32,
}

/// Extracted, not yet weighted features of one text: hashed keys with their
/// term frequency, per block.
#[derive(Default)]
struct RawFeatures {
    word: Vec<(u64, u32)>,
    pairs: Vec<(u64, u32)>,
    chars: Vec<(u64, u32)>,
}

/// A weighted sparse vector: vocabulary indices and values.
struct SparseVec {
    idx: Vec<u32>,
    val: Vec<f32>,
}

/// Compressed sparse rows of the training matrix.
struct Csr {
    row_ptr: Vec<usize>,
    idx: Vec<u32>,
    val: Vec<f32>,
}

impl Csr {
    fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.row_ptr[i], self.row_ptr[i + 1]);
        (&self.idx[a..b], &self.val[a..b])
    }
    fn rows(&self) -> usize {
        self.row_ptr.len() - 1
    }
}

impl EmbeddedModel {
    /// Trains a model with the default [`TrainConfig`].
    pub fn train(set: &TrainingSet) -> EmbeddedModel {
        Self::train_with(set, &TrainConfig::default())
    }

    /// Trains a model with explicit hyper-parameters.
    ///
    /// Never fails: an intent naming an unknown department creates it, and a
    /// set without any examples yields a model whose predictions have
    /// confidence 0.
    pub fn train_with(set: &TrainingSet, config: &TrainConfig) -> EmbeddedModel {
        let (departments, classes, docs) = collect_classes(set, config.learn_from_names);
        let n_classes = classes.len();
        let per_class = docs.len() as f32 / n_classes.max(1) as f32;
        let few_shot = per_class <= config.few_shot_max_per_class;
        // The model keeps the effective config: featurisation and weighting
        // at classification time must match training.
        let effective;
        let config = if few_shot {
            effective = TrainConfig {
                char_weight: config.few_shot_char_weight,
                word_bigrams: config.few_shot_word_bigrams,
                ..config.clone()
            };
            &effective
        } else {
            config
        };

        // Featurise every training text once.
        let raw: Vec<RawFeatures> = docs.iter().map(|(text, _)| extract(text, config)).collect();
        let labels: Vec<usize> = docs.iter().map(|(_, c)| *c).collect();

        // Vocabulary: indices assigned in sorted-hash order so the model does
        // not depend on HashMap iteration order.
        let mut df: Vocab = Vocab::default();
        for r in &raw {
            for &(h, _) in r.word.iter().chain(&r.pairs).chain(&r.chars) {
                *df.entry(h).or_insert(0) += 1;
            }
        }
        // Features seen in fewer than `min_df` texts are left out: they
        // barely generalise, and dropping them shrinks the weight matrix
        // enough to keep training cache-friendly. At classification time they
        // count as unknown (in the norm only).
        let min_df = config.min_df.max(1) as u32;
        let mut keys: Vec<u64> = df
            .iter()
            .filter(|&(_, &n)| n >= min_df)
            .map(|(&k, _)| k)
            .collect();
        // Most frequent features first (ties by hash, for determinism): the
        // hot rows of the weight matrix then share a few cache lines, which
        // roughly halves training time.
        keys.sort_unstable_by_key(|k| (std::cmp::Reverse(df[k]), *k));
        let n_docs = raw.len() as f32;
        let idf: Vec<f32> = if few_shot && config.few_shot_class_idf {
            // With ~10 texts per class, document frequency mostly measures
            // how many examples happen to repeat a word within their own
            // class; what matters is how many classes use it. Class-level IDF
            // keeps a class's recurring words (its evidence) at full weight
            // and discounts words shared across classes. Worth about +0.6
            // points at 10 shots on Banking77, but slightly worse with the
            // full data, hence few-shot only.
            let cf = class_frequencies(&raw, &labels);
            let n = n_classes as f32;
            keys.iter()
                .map(|k| ((1.0 + n) / (1.0 + cf[k] as f32)).ln() + 1.0)
                .collect()
        } else {
            keys.iter()
                .map(|k| ((1.0 + n_docs) / (1.0 + df[k] as f32)).ln() + 1.0)
                .collect()
        };
        let vocab: FeatureIndex = keys
            .iter()
            .zip(&idf)
            .enumerate()
            .map(|(i, (&k, &w))| (k, (i as u32, w)))
            .collect();

        let unknown_idf = (1.0 + n_docs).ln() + 1.0;

        let mut model = EmbeddedModel {
            config: config.clone(),
            vocab,
            idf,
            unknown_idf,
            departments,
            classes,
            weights: Vec::new(),
            scales: Vec::new(),
            biases: vec![0.0; n_classes],
            temperature: config.default_temperature,
            background: config.background_margin,
        };
        if n_classes == 0 || raw.is_empty() {
            return model;
        }

        // Training matrix.
        let mut csr = Csr {
            row_ptr: vec![0],
            idx: Vec::new(),
            val: Vec::new(),
        };
        for r in &raw {
            let v = model.weight(r);
            csr.idx.extend_from_slice(&v.idx);
            csr.val.extend_from_slice(&v.val);
            csr.row_ptr.push(csr.idx.len());
        }

        let n_features = model.idf.len();
        let solved = solve_all(&csr, &labels, n_classes, n_features, config);

        let mut weights = vec![0.0f32; n_features * n_classes];
        let mut alphas: Vec<Vec<f32>> = vec![Vec::new(); n_classes];
        for block in solved {
            for (j, &k) in block.classes.iter().enumerate() {
                for (f, wf) in block.w.iter().enumerate() {
                    weights[f * n_classes + k] = wf[j];
                }
                model.biases[k] = block.b[j] * config.bias as f32;
                alphas[k] = block.alpha.iter().map(|a| a[j]).collect();
            }
        }
        if config.centroid_weight > 0.0 {
            // Centroids matter most with few examples per class, so their
            // weight shrinks as 1/sqrt(examples per class) (tuned on
            // Banking77: ~2 at 10 examples, ~0.6 at 100).
            let per_class = labels.len() as f32 / n_classes as f32;
            let gamma = config.centroid_weight / per_class.max(1.0).sqrt();
            add_centroids(&mut weights, &csr, &labels, n_classes, gamma);
        }
        // A featureless text scores exactly the biases; a class must beat
        // that clearly to count as a match. With few examples the biases are
        // close to 0 and the fixed background margin alone would let
        // generic text through.
        let max_bias = model
            .biases
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        model.background = config
            .background_margin
            .max(max_bias + config.background_above_bias);
        if config.calibrate
            && let Some(t) = fit_temperature(&model, &weights, &csr, &labels, &alphas)
        {
            model.temperature = t;
        }
        (model.weights, model.scales) = quantise(&weights, n_classes);
        model
    }

    /// Classifies one message. Never panics; cost is bounded by
    /// [`TrainConfig::max_input_chars`].
    pub fn classify(&self, text: &str) -> Prediction {
        match self.classify_ranked(text, 1).into_iter().next() {
            Some(r) => Prediction {
                department: r.department,
                intent: r.intent,
                confidence: r.confidence,
            },
            None => Prediction {
                department: self.departments.first().cloned().unwrap_or_default(),
                intent: None,
                confidence: 0.0,
            },
        }
    }

    /// Returns the `k` best classes, best first, with calibrated
    /// probabilities (useful to offer alternatives or to aggregate per
    /// department).
    pub fn classify_ranked(&self, text: &str, k: usize) -> Vec<RankedPrediction> {
        let margins = self.margins(text);
        let probs = self.probabilities(&margins);
        let mut order: Vec<usize> = (0..margins.len()).collect();
        // Ties broken by class index keep the output deterministic.
        order.sort_by(|&a, &b| margins[b].total_cmp(&margins[a]).then(a.cmp(&b)));
        order
            .into_iter()
            .take(k)
            .map(|c| RankedPrediction {
                department: self.departments[self.classes[c].department].clone(),
                intent: self.classes[c].intent.clone(),
                confidence: probs[c],
                margin: margins[c],
            })
            .collect()
    }

    /// Names of the departments the model can route to, in training order.
    pub fn departments(&self) -> &[String] {
        &self.departments
    }

    /// Number of classes (intents plus departments without intents).
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Number of features in the vocabulary.
    pub fn num_features(&self) -> usize {
        self.idf.len()
    }

    /// Temperature of the confidence softmax.
    pub fn temperature(&self) -> f32 {
        self.temperature
    }

    /// SVM margin of every class for `text`.
    fn margins(&self, text: &str) -> Vec<f32> {
        let k = self.classes.len();
        let mut scores = self.biases.clone();
        if k == 0 || self.weights.is_empty() {
            return scores;
        }
        let v = self.weight(&extract(text, &self.config));
        for (&f, &x) in v.idx.iter().zip(&v.val) {
            self.add_row(&mut scores, f, x);
        }
        scores
    }

    /// Adds `x` times the weight row of feature `f` to `scores` (one entry
    /// per class).
    #[inline]
    fn add_row(&self, scores: &mut [f32], f: u32, x: f32) {
        let k = scores.len();
        let f = f as usize;
        let xs = x * self.scales[f];
        let row = &self.weights[f * k..(f + 1) * k];
        for (s, &q) in scores.iter_mut().zip(row) {
            *s += xs * f32::from(q);
        }
    }

    /// Softmax over margins with a background logit fixed at margin 0.
    fn probabilities(&self, margins: &[f32]) -> Vec<f32> {
        softmax_with_background(margins, self.temperature, self.background)
    }

    /// TF-IDF weighting and per-block normalisation of extracted features.
    /// Unknown features only contribute to the norm.
    fn weight(&self, raw: &RawFeatures) -> SparseVec {
        let mut out = SparseVec {
            idx: Vec::with_capacity(raw.word.len() + raw.pairs.len() + raw.chars.len()),
            val: Vec::with_capacity(raw.word.len() + raw.pairs.len() + raw.chars.len()),
        };
        for (block, scale) in [
            (&raw.word, self.config.word_weight),
            (&raw.pairs, self.config.pair_weight),
            (&raw.chars, self.config.char_weight),
        ] {
            let start = out.idx.len();
            let mut norm2 = 0.0f32;
            for &(h, tf) in block {
                let tfw = if self.config.sublinear_tf {
                    1.0 + (tf as f32).ln()
                } else {
                    tf as f32
                };
                match self.vocab.get(&h) {
                    Some(&(i, idf)) => {
                        let v = tfw * idf;
                        norm2 += v * v;
                        out.idx.push(i);
                        out.val.push(v);
                    }
                    None => {
                        let v = tfw * self.unknown_idf;
                        norm2 += v * v;
                    }
                }
            }
            if norm2 > 0.0 {
                let s = scale / norm2.sqrt();
                for v in &mut out.val[start..] {
                    *v *= s;
                }
            }
        }
        out
    }
}

/// Number of distinct classes whose training texts contain each feature.
fn class_frequencies(raw: &[RawFeatures], labels: &[usize]) -> Vocab {
    // Visiting texts grouped by class lets one "last class seen" per feature
    // detect the first occurrence in each class.
    let mut order: Vec<usize> = (0..raw.len()).collect();
    order.sort_by_key(|&i| labels[i]);
    let mut last: HashMap<u64, usize, BuildHasherDefault<PassThroughHasher>> = HashMap::default();
    let mut cf = Vocab::default();
    for i in order {
        let r = &raw[i];
        for &(h, _) in r.word.iter().chain(&r.pairs).chain(&r.chars) {
            if last.insert(h, labels[i]) != Some(labels[i]) {
                *cf.entry(h).or_insert(0) += 1;
            }
        }
    }
    cf
}

/// Adds `gamma` times each class's normalised, mean-centred centroid to its
/// weights, i.e.
/// blends a nearest-centroid (Rocchio) classifier into the linear model at
/// no inference cost. Centroids generalise better than SVM weights from a
/// handful of examples.
fn add_centroids(weights: &mut [f32], csr: &Csr, labels: &[usize], k: usize, gamma: f32) {
    let n_features = weights.len() / k;
    let mut centroids = vec![0.0f32; n_features * k];
    for (i, &y) in labels.iter().enumerate() {
        let (idx, val) = csr.row(i);
        for (&f, &v) in idx.iter().zip(val) {
            centroids[f as usize * k + y] += v;
        }
    }
    let mut norms = vec![0.0f32; k];
    for row in centroids.chunks_exact(k) {
        for (n, &c) in norms.iter_mut().zip(row) {
            *n += c * c;
        }
    }
    for n in &mut norms {
        *n = if *n > 0.0 { gamma / n.sqrt() } else { 0.0 };
    }
    // The mean of the normalised centroids is subtracted from each: it is
    // the part every class shares (common words, frequent character
    // n-grams). Adding it would raise every margin for any text, unrelated
    // text included; without it argmax is unchanged and generic text does
    // not look like a match.
    for (w, c) in weights.chunks_exact_mut(k).zip(centroids.chunks_exact(k)) {
        let mean = c.iter().zip(&norms).map(|(&c, &s)| c * s).sum::<f32>() / k as f32;
        for ((w, &c), &s) in w.iter_mut().zip(c).zip(&norms) {
            *w += c * s - mean;
        }
    }
}

/// Quantises feature-major `weights` (`k` classes per row) to `i8` with one
/// scale per row, so each row keeps its own resolution: rows of rare
/// features have much smaller weights than those of frequent ones, and a
/// single global scale would flush them to 0. `k` must be positive.
fn quantise(weights: &[f32], k: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(weights.len());
    let mut scales = Vec::with_capacity(weights.len() / k);
    for row in weights.chunks_exact(k) {
        let max = row.iter().fold(0.0f32, |m, &w| m.max(w.abs()));
        let scale = max / 127.0;
        let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
        // Round half away from zero by hand: `f32::round` is a libm call on
        // baseline x86-64 and made this loop cost more than the rest of
        // training's bookkeeping. `as` saturates, so ±127 cannot overflow.
        q.extend(row.iter().map(|&w| {
            let y = w * inv;
            (y + 0.5f32.copysign(y)) as i8
        }));
        scales.push(scale);
    }
    (q, scales)
}

/// Stable softmax over `margins / t` with an extra background logit at
/// `background_margin`; returns the class probabilities (the background's
/// share is the remainder).
fn softmax_with_background(margins: &[f32], t: f32, background_margin: f32) -> Vec<f32> {
    let t = t.max(1e-3);
    let max = margins.iter().copied().fold(background_margin, f32::max);
    let mut exps: Vec<f32> = margins.iter().map(|&m| ((m - max) / t).exp()).collect();
    let background = ((background_margin - max) / t).exp();
    let sum: f32 = exps.iter().sum::<f32>() + background;
    for e in &mut exps {
        *e = (*e / sum).clamp(0.0, 1.0);
    }
    exps
}

/// Turns a label such as `card_not_working` or `TopUp` into words.
fn humanize(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let mut prev_lower = false;
    for c in name.chars() {
        if c == '_' || c == '-' || c == '.' || c == '/' {
            out.push(' ');
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower {
            out.push(' ');
        }
        prev_lower = c.is_lowercase();
        out.push(c);
    }
    out
}

/// Flattens the training set into departments, classes and labelled texts.
#[allow(clippy::type_complexity)]
fn collect_classes(
    set: &TrainingSet,
    learn_from_names: usize,
) -> (Vec<String>, Vec<ClassLabel>, Vec<(String, usize)>) {
    let mut departments: Vec<String> = Vec::new();
    let mut dept_index: HashMap<&str, usize> = HashMap::new();
    for d in &set.departments {
        if !dept_index.contains_key(d.name.as_str()) {
            dept_index.insert(&d.name, departments.len());
            departments.push(d.name.clone());
        }
    }
    let mut classes = Vec::new();
    let mut docs = Vec::new();
    let mut has_intent = vec![false; departments.len()];
    let mut intent_index: HashMap<&str, usize> = HashMap::new();
    let mut intent_names_added = std::collections::HashSet::new();
    for it in &set.intents {
        let dep = match dept_index.get(it.department.as_str()) {
            Some(&d) => d,
            None => {
                dept_index.insert(&it.department, departments.len());
                departments.push(it.department.clone());
                has_intent.push(false);
                departments.len() - 1
            }
        };
        has_intent[dep] = true;
        // Intents listed twice under the same name are merged.
        let class = *intent_index.entry(&it.name).or_insert_with(|| {
            classes.push(ClassLabel {
                department: dep,
                intent: Some(it.name.clone()),
            });
            classes.len() - 1
        });
        docs.extend(
            it.examples
                .iter()
                .filter(|e| !e.trim().is_empty())
                .map(|e| (e.clone(), class)),
        );
        if learn_from_names > 0 && intent_names_added.insert(class) {
            for _ in 0..learn_from_names {
                docs.push((humanize(&it.name), class));
            }
        }
    }
    // Departments without intents are classes themselves, trained on their
    // description and examples.
    for d in &set.departments {
        let dep = dept_index[d.name.as_str()];
        if has_intent[dep]
            || classes
                .iter()
                .any(|c| c.intent.is_none() && c.department == dep)
        {
            continue;
        }
        let class = classes.len();
        classes.push(ClassLabel {
            department: dep,
            intent: None,
        });
        if !d.description.trim().is_empty() {
            docs.push((d.description.clone(), class));
        }
        for _ in 0..learn_from_names {
            docs.push((humanize(&d.name), class));
        }
        docs.extend(
            d.examples
                .iter()
                .filter(|e| !e.trim().is_empty())
                .map(|e| (e.clone(), class)),
        );
    }
    (departments, classes, docs)
}

// ---------------------------------------------------------------------------
// Feature extraction
// ---------------------------------------------------------------------------

const WORD_SEED: u64 = 0x9E37_79B9_7F4A_7C15;
const CHAR_SEED: u64 = 0xC2B2_AE3D_27D4_EB4F;
const BIGRAM_TAG: u64 = 0x1656_67B1_9E37_79F9;
/// Only the first this many words form pairs, bounding the quadratic cost
/// on long inputs.
const MAX_PAIR_WORDS: usize = 64;
const PAIR_TAG: u64 = 0x61C8_8646_80B5_83EB;

/// SplitMix64 finaliser: turns FNV's weak low bits into a well-mixed hash.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv_step(h: u64, c: char) -> u64 {
    (h ^ u64::from(c)).wrapping_mul(0x0000_0100_0000_01B3)
}

/// Lowercases, truncates and splits `text` into words. Returns the character
/// buffer and the `[start, end)` ranges of the words in it.
fn tokenize(text: &str, config: &TrainConfig) -> (Vec<char>, Vec<(usize, usize)>) {
    let mut chars = Vec::with_capacity(text.len().min(config.max_input_chars));
    let mut words = Vec::new();
    let mut start: Option<usize> = None;
    for c in text.chars().take(config.max_input_chars) {
        if c == '\'' || c == '\u{2019}' {
            // Dropped without ending the word: "don't" == "dont".
            continue;
        }
        if c.is_alphanumeric() {
            if start.is_none() {
                start = Some(chars.len());
            }
            if config.fold_digits && c.is_ascii_digit() {
                chars.push('0');
            } else if c.is_ascii() {
                chars.push(c.to_ascii_lowercase());
            } else {
                chars.extend(c.to_lowercase());
            }
        } else if let Some(s) = start.take() {
            words.push((s, chars.len()));
        }
    }
    if let Some(s) = start {
        words.push((s, chars.len()));
    }
    (chars, words)
}

/// Sorts hashes and turns them into `(hash, count)` pairs.
fn count(mut hashes: Vec<u64>) -> Vec<(u64, u32)> {
    hashes.sort_unstable();
    let mut out: Vec<(u64, u32)> = Vec::with_capacity(hashes.len());
    for h in hashes {
        match out.last_mut() {
            Some((last, n)) if *last == h => *n += 1,
            _ => out.push((h, 1)),
        }
    }
    out
}

/// Hash of a run of characters.
fn hash_chars(chars: &[char]) -> u64 {
    mix64(chars.iter().fold(WORD_SEED, |h, &c| fnv_step(h, c)))
}

/// Extracts the hashed features of `text`: word unigrams and bigrams, word
/// pairs, and character n-grams inside padded words.
fn extract(text: &str, config: &TrainConfig) -> RawFeatures {
    let (chars, words) = tokenize(text, config);
    let mut word_h = Vec::with_capacity(words.len() * 2);
    let mut prev: Option<u64> = None;
    for &(s, e) in &words {
        let h = hash_chars(&chars[s..e]);
        word_h.push(h);
        if let (true, Some(p)) = (config.word_bigrams, prev) {
            word_h.push(mix64(p.rotate_left(23) ^ h ^ BIGRAM_TAG));
        }
        prev = Some(h);
    }

    // Word pairs at any distance (ordered, words cut to a prefix): a cheap
    // stand-in for a quadratic kernel. They capture combinations such as
    // "top up" + "pending" that adjacent bigrams miss, which is where most
    // Banking77 confusions are.
    let mut pair_h = Vec::new();
    if config.word_pair_window > 0 {
        let stems: Vec<u64> = words
            .iter()
            .take(MAX_PAIR_WORDS)
            .map(|&(s, e)| {
                let e = match config.pair_prefix {
                    0 => e,
                    p => e.min(s + p),
                };
                hash_chars(&chars[s..e])
            })
            .collect();
        let gap = config.pair_min_gap.max(1);
        for i in 0..stems.len() {
            for j in i + gap..stems.len().min(i + config.word_pair_window + 1) {
                pair_h.push(mix64(stems[i].rotate_left(29) ^ stems[j] ^ PAIR_TAG));
            }
        }
    }

    let mut char_h = Vec::new();
    let (nmin, nmax) = (config.char_ngram_min.max(1), config.char_ngram_max);
    if config.char_ngram_min > 0 && nmax >= nmin {
        let mut padded: Vec<char> = Vec::new();
        for &(s, e) in &words {
            padded.clear();
            padded.push(' ');
            padded.extend_from_slice(&chars[s..e]);
            padded.push(' ');
            let len = padded.len();
            for start in 0..len {
                let mut h = CHAR_SEED;
                for n in 1..=nmax.min(len - start) {
                    h = fnv_step(h, padded[start + n - 1]);
                    if n >= nmin {
                        char_h.push(mix64(h ^ n as u64));
                    }
                }
            }
        }
    }
    RawFeatures {
        word: count(word_h),
        pairs: count(pair_h),
        chars: count(char_h),
    }
}

// ---------------------------------------------------------------------------
// Training: one-vs-rest linear SVM, dual coordinate descent
// ---------------------------------------------------------------------------

/// Small deterministic PRNG (SplitMix64); good enough for shuffles and keeps
/// the crate free of a `rand` dependency.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// Creates a generator from a seed.
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// Next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform integer in `0..n` (`n > 0`); the modulo bias is irrelevant
    /// for shuffling data sets of realistic size.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Fisher–Yates shuffle.
    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Classes solved together: the width of one weight "lane group" (8 f32 =
/// one AVX register, two SSE registers).
const LANES: usize = 8;

/// Solution of the one-vs-rest problems of a block of at most [`LANES`]
/// classes.
struct BlockSolution {
    /// The classes solved, in lane order.
    classes: Vec<usize>,
    /// Weights per feature, one lane per class of the block.
    w: Vec<[f32; LANES]>,
    /// Weight of the bias feature per lane (multiply by `config.bias` for
    /// the bias).
    b: [f32; LANES],
    /// Dual variables per example, one lane per class.
    alpha: Vec<[f32; LANES]>,
}

/// Trains every one-vs-rest problem. Classes are solved in blocks of
/// [`LANES`] (consecutive class indices); blocks are spread over threads. A
/// block's result depends only on its classes and the seed, so the model
/// does not depend on the thread count.
fn solve_all(
    csr: &Csr,
    labels: &[usize],
    n_classes: usize,
    n_features: usize,
    config: &TrainConfig,
) -> Vec<BlockSolution> {
    let sq_norms: Vec<f32> = (0..csr.rows())
        .map(|i| csr.row(i).1.iter().map(|&v| v * v).sum())
        .collect();
    let blocks: Vec<Vec<usize>> = (0..n_classes)
        .collect::<Vec<_>>()
        .chunks(LANES)
        .map(<[usize]>::to_vec)
        .collect();
    let threads = config.threads.clamp(1, blocks.len().max(1));
    let sq_norms = &sq_norms;
    let solve = move |b: Vec<usize>| solve_block(csr, sq_norms, labels, b, n_features, config);
    if threads == 1 {
        return blocks.into_iter().map(solve).collect();
    }
    let mut per_thread: Vec<Vec<Vec<usize>>> = vec![Vec::new(); threads];
    for (i, b) in blocks.into_iter().enumerate() {
        per_thread[i % threads].push(b);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = per_thread
            .into_iter()
            .map(|bs| scope.spawn(move || bs.into_iter().map(solve).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("classifier training thread panicked"))
            .collect()
    })
}

/// liblinear's dual coordinate descent with shrinking for L2-regularised
/// L1/L2-loss SVM (Hsieh et al., 2008), run for up to [`LANES`] one-vs-rest
/// problems at once.
///
/// Visiting an example once for a whole block computes all its margins in
/// one SIMD pass over weights that fit in L2 cache, and an example is shrunk
/// (skipped until the final check) only when it is inactive for every class
/// of the block: most examples are far negatives for all of them, so after a
/// few passes only a small fraction is still visited.
fn solve_block(
    csr: &Csr,
    sq_norms: &[f32],
    labels: &[usize],
    classes: Vec<usize>,
    n_features: usize,
    config: &TrainConfig,
) -> BlockSolution {
    let l = labels.len();
    let m = classes.len();
    let bias = config.bias as f32;

    // Per class: (diag, upper bound) for positives and for negatives.
    let params: Vec<[(f32, f32); 2]> = classes
        .iter()
        .map(|&k| {
            let n_pos = labels.iter().filter(|&&y| y == k).count();
            let (mut c_pos, mut c_neg) = (config.c, config.c);
            if config.balanced && n_pos > 0 && n_pos < l {
                // Each side gets the total weight it would have with even classes.
                c_pos = config.c * l as f64 / (2.0 * n_pos as f64);
                c_neg = config.c * l as f64 / (2.0 * (l - n_pos) as f64);
            }
            let p = |c: f64| match config.loss {
                Loss::SquaredHinge => ((0.5 / c) as f32, f32::INFINITY),
                Loss::Hinge => (0.0, c as f32),
            };
            [p(c_pos), p(c_neg)]
        })
        .collect();

    let mut w = vec![[0.0f32; LANES]; n_features];
    let mut wb = [0.0f32; LANES];
    let mut alpha = vec![[0.0f32; LANES]; l];
    let mut index: Vec<usize> = (0..l).collect();
    let mut active = l;
    let mut rng = SplitMix64::new(config.seed ^ mix64(classes[0] as u64 + 1));
    let mut pg_max_old = [f32::INFINITY; LANES];
    let mut pg_min_old = [f32::NEG_INFINITY; LANES];
    let eps = config.eps as f32;

    for _ in 0..config.max_iter {
        let mut pg_max_new = [f32::NEG_INFINITY; LANES];
        let mut pg_min_new = [f32::INFINITY; LANES];
        rng.shuffle(&mut index[..active]);
        let mut s = 0;
        while s < active {
            let i = index[s];
            let (idx, val) = csr.row(i);
            let mut score = [0.0f32; LANES];
            for t in 0..LANES {
                score[t] = wb[t] * bias;
            }
            for (&f, &v) in idx.iter().zip(val) {
                let r = &w[f as usize];
                for t in 0..LANES {
                    score[t] += v * r[t];
                }
            }
            let q = sq_norms[i] + bias * bias;
            let a = &mut alpha[i];
            let mut delta = [0.0f32; LANES];
            let mut changed = false;
            let mut shrink = true;
            for j in 0..m {
                let (yi, (diag, upper)) = if labels[i] == classes[j] {
                    (1.0f32, params[j][0])
                } else {
                    (-1.0f32, params[j][1])
                };
                let g = yi * score[j] - 1.0 + a[j] * diag;
                let pg = if a[j] == 0.0 {
                    if g > pg_max_old[j] {
                        continue; // inactive for this class
                    }
                    g.min(0.0)
                } else if a[j] >= upper {
                    if g < pg_min_old[j] {
                        continue;
                    }
                    g.max(0.0)
                } else {
                    g
                };
                shrink = false;
                pg_max_new[j] = pg_max_new[j].max(pg);
                pg_min_new[j] = pg_min_new[j].min(pg);
                if pg.abs() > 1e-12 {
                    let old = a[j];
                    a[j] = (old - g / (q + diag)).clamp(0.0, upper);
                    delta[j] = (a[j] - old) * yi;
                    changed = true;
                }
            }
            if shrink {
                active -= 1;
                index.swap(s, active);
                continue;
            }
            if changed {
                for (&f, &v) in idx.iter().zip(val) {
                    let r = &mut w[f as usize];
                    for t in 0..LANES {
                        r[t] += delta[t] * v;
                    }
                }
                for t in 0..LANES {
                    wb[t] += delta[t] * bias;
                }
            }
            s += 1;
        }
        let gap = (0..m)
            .map(|j| pg_max_new[j] - pg_min_new[j])
            .filter(|g| g.is_finite())
            .fold(0.0f32, f32::max);
        if gap <= eps {
            if active == l {
                break;
            }
            // Converged on the shrunk set: re-check every example once.
            active = l;
            pg_max_old = [f32::INFINITY; LANES];
            pg_min_old = [f32::NEG_INFINITY; LANES];
            continue;
        }
        for j in 0..m {
            pg_max_old[j] = if pg_max_new[j] <= 0.0 {
                f32::INFINITY
            } else {
                pg_max_new[j]
            };
            pg_min_old[j] = if pg_min_new[j] >= 0.0 {
                f32::NEG_INFINITY
            } else {
                pg_min_new[j]
            };
        }
    }
    BlockSolution {
        classes,
        w,
        b: wb,
        alpha,
    }
}

// ---------------------------------------------------------------------------
// Confidence calibration
// ---------------------------------------------------------------------------

/// Fits the softmax temperature by minimising the negative log-likelihood of
/// the true class on approximate leave-one-out margins.
///
/// Training-set margins are over-confident (the SVM has fitted them), so each
/// example's own contribution is removed: for the dual SVM,
/// `w_without_i = w - alpha_i y_i x_i`, hence
/// `m_loo = m - alpha_i y_i (|x_i|^2 + bias^2)`. This is the classic cheap
/// (pessimistic) leave-one-out estimate and costs one scoring pass instead of
/// retraining. Returns `None` with too little data to fit anything.
///
/// `weights` are the full-precision feature-major weights (`model`'s are
/// quantised afterwards): scoring with them is cheaper during training, and
/// the quantisation error is far below what moves the fitted temperature.
fn fit_temperature(
    model: &EmbeddedModel,
    weights: &[f32],
    csr: &Csr,
    labels: &[usize],
    alphas: &[Vec<f32>],
) -> Option<f32> {
    let n = csr.rows();
    let k = model.classes.len();
    if n < 2 * k || k < 2 {
        return None;
    }
    // A bounded, evenly spread subsample keeps calibration cost small.
    let step = n.div_ceil(3000).max(1);
    let bias2 = model.config.bias * model.config.bias;
    let mut rows: Vec<(Vec<f32>, usize)> = Vec::new();
    for i in (0..n).step_by(step) {
        let (idx, val) = csr.row(i);
        let mut m = model.biases.clone();
        let mut sq = bias2;
        for (&f, &x) in idx.iter().zip(val) {
            sq += f64::from(x) * f64::from(x);
            let row = &weights[f as usize * k..(f as usize + 1) * k];
            for (s, &w) in m.iter_mut().zip(row) {
                *s += x * w;
            }
        }
        for (c, mc) in m.iter_mut().enumerate() {
            let yi = if labels[i] == c { 1.0 } else { -1.0 };
            *mc -=
                (f64::from(model.config.loo_correction) * f64::from(alphas[c][i]) * yi * sq) as f32;
        }
        rows.push((m, labels[i]));
    }
    let nll = |t: f32| -> f64 {
        rows.iter()
            .map(|(m, y)| {
                let p = softmax_with_background(m, t, model.background)[*y];
                -f64::from(p.max(1e-6)).ln()
            })
            .sum()
    };
    // Golden-section search on log(t): the NLL is unimodal in practice.
    let (mut a, mut b) = (0.02f32.ln(), 2.0f32.ln());
    let g = 0.618_034f32;
    let mut x1 = b - g * (b - a);
    let mut x2 = a + g * (b - a);
    let (mut f1, mut f2) = (nll(x1.exp()), nll(x2.exp()));
    for _ in 0..30 {
        if f1 < f2 {
            b = x2;
            x2 = x1;
            f2 = f1;
            x1 = b - g * (b - a);
            f1 = nll(x1.exp());
        } else {
            a = x1;
            x1 = x2;
            f1 = f2;
            x2 = a + g * (b - a);
            f2 = nll(x2.exp());
        }
    }
    Some(((a + b) / 2.0).exp())
}

/// Folder of the test fixtures, relative to the crate root
/// (`CARGO_MANIFEST_DIR`). The only place to change when the fixtures move.
#[cfg(test)]
pub(crate) const TEST_FIXTURE_DIR: &str = "tests/fixtures";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Reads `text,category` rows of the Banking77 subset fixture. A minimal
    /// RFC 4180 reader so this module's tests do not depend on `eval`.
    fn fixture_rows() -> Vec<(String, String)> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(TEST_FIXTURE_DIR)
            .join("banking77-subset.csv");
        let content = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut rows = Vec::new();
        let (mut field, mut record) = (String::new(), Vec::new());
        let (mut quoted, mut chars) = (false, content.chars().peekable());
        while let Some(c) = chars.next() {
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => field.push(c),
                (false, '"') => quoted = true,
                (false, ',') => record.push(std::mem::take(&mut field)),
                (false, '\n') => {
                    record.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut record));
                }
                (false, '\r') => {}
                (false, c) => field.push(c),
            }
        }
        if !field.is_empty() || !record.is_empty() {
            record.push(field);
            rows.push(record);
        }
        assert_eq!(rows[0], ["text", "category"], "fixture header");
        rows.into_iter()
            .skip(1)
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect()
    }

    /// Fixed split of the fixture: the first `n_train` rows of each intent
    /// (in file order) train, the rest test. All intents go to one
    /// department so only intent accuracy is exercised here.
    fn fixture_split(n_train: usize) -> (TrainingSet, Vec<(String, String)>) {
        let mut by_intent: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (text, cat) in fixture_rows() {
            by_intent.entry(cat).or_default().push(text);
        }
        let mut intents = Vec::new();
        let mut test = Vec::new();
        for (name, texts) in by_intent {
            test.extend(texts[n_train..].iter().map(|t| (t.clone(), name.clone())));
            intents.push(Intent {
                name,
                department: "bank".into(),
                examples: texts[..n_train].to_vec(),
            });
        }
        let set = TrainingSet {
            departments: vec![Department {
                name: "bank".into(),
                description: "Online banking".into(),
                examples: Vec::new(),
            }],
            intents,
        };
        (set, test)
    }

    /// The small demo tenant: four departments, no intents.
    fn demo_tenant() -> TrainingSet {
        let dep = |name: &str, description: &str, examples: &[&str]| Department {
            name: name.into(),
            description: description.into(),
            examples: examples.iter().map(|s| s.to_string()).collect(),
        };
        TrainingSet {
            departments: vec![
                dep(
                    "Sales",
                    "Pricing, plans, quotes, demos and buying the product",
                    &[
                        "How much does the premium plan cost?",
                        "Can I get a quote for 50 seats?",
                        "What is the price of the enterprise edition?",
                        "I'd like to book a demo before buying",
                        "Do you offer discounts for startups?",
                        "I want to upgrade to a bigger plan",
                    ],
                ),
                dep(
                    "Support",
                    "Technical problems, bugs, errors, crashes and login issues with the app",
                    &[
                        "The app crashes when I open it",
                        "I can't log in to my account",
                        "I get an error message when saving",
                        "The website is not loading",
                        "How do I reset my password?",
                        "Sync stopped working on my phone",
                    ],
                ),
                dep(
                    "Billing",
                    "Invoices, payments, charges, refunds and receipts",
                    &[
                        "I was charged twice this month",
                        "Where can I download my invoice?",
                        "I need a refund for my last payment",
                        "My credit card payment failed",
                        "The amount on my bill is wrong",
                        "Please update the billing address on my receipts",
                    ],
                ),
                dep(
                    "General",
                    "Anything else: opening hours, contact details, feedback and partnerships",
                    &[
                        "What are your opening hours?",
                        "How can I contact you by phone?",
                        "I have some feedback about your service",
                        "Where is your office located?",
                        "Are you hiring?",
                    ],
                ),
            ],
            intents: Vec::new(),
        }
    }

    fn edge_inputs() -> Vec<String> {
        vec![
            String::new(),
            "   \n\t ".into(),
            "?!?!... ,,, ;;; ---".into(),
            "😀🎉🔥👍".into(),
            "the weather on mars is cold".into(),
            "我的银行卡还没有寄到，怎么办？".into(),
            "لم تصل بطاقتي المصرفية بعد".into(),
            "Моя банковская карта ещё не пришла".into(),
            "a".repeat(1 << 20),
            "card ".repeat(200_000),
            "I".into(),
            "\u{0}\u{200b}\u{feff}".into(),
        ]
    }

    #[test]
    fn accuracy_floor_on_fixture() {
        let (set, test) = fixture_split(10);
        let model = EmbeddedModel::train(&set);
        let correct = test
            .iter()
            .filter(|(text, gold)| model.classify(text).intent.as_deref() == Some(gold))
            .count();
        let acc = correct as f64 / test.len() as f64;
        // Measured 0.733 (282/385) with the default config; the floor leaves
        // about five points for legitimate tuning and platform noise while
        // catching real regressions.
        let floor = 0.68;
        eprintln!("fixture accuracy {acc:.4} on {} messages", test.len());
        assert!(acc >= floor, "accuracy {acc:.4} fell below {floor}");
    }

    #[test]
    fn training_is_deterministic() {
        let (set, _) = fixture_split(6);
        let a = EmbeddedModel::train(&set);
        let b = EmbeddedModel::train(&set);
        let one_thread = EmbeddedModel::train_with(
            &set,
            &TrainConfig {
                threads: 1,
                ..TrainConfig::default()
            },
        );
        for m in [&b, &one_thread] {
            assert_eq!(a.weights, m.weights);
            assert_eq!(a.scales, m.scales);
            assert_eq!(a.biases, m.biases);
            assert_eq!(a.idf, m.idf);
            assert_eq!(a.temperature.to_bits(), m.temperature.to_bits());
        }
        for text in ["my card has not arrived", "exchange rate for euros", ""] {
            assert_eq!(a.classify(text), b.classify(text));
            assert_eq!(
                a.classify_ranked(text, 5),
                one_thread.classify_ranked(text, 5)
            );
        }
    }

    #[test]
    fn edge_inputs_are_safe_and_unsure() {
        let (set, _) = fixture_split(10);
        for model in [
            EmbeddedModel::train(&set),
            EmbeddedModel::train(&demo_tenant()),
        ] {
            for text in edge_inputs() {
                let p = model.classify(&text);
                let shown: String = text.chars().take(30).collect();
                assert!(
                    (0.0..=1.0).contains(&p.confidence),
                    "{shown:?}: confidence {} out of range",
                    p.confidence
                );
                assert!(!p.department.is_empty(), "{shown:?}: no department");
                let ranked = model.classify_ranked(&text, usize::MAX);
                let total: f32 = ranked.iter().map(|r| r.confidence).sum();
                assert!(
                    total <= 1.0 + 1e-4,
                    "{shown:?}: probabilities sum to {total}"
                );
            }
            for text in [
                "",
                "?!?!... ,,,",
                "😀🎉🔥👍",
                "the weather on mars is cold",
                "I love pizza and football",
            ] {
                let p = model.classify(text);
                assert!(
                    p.confidence < 0.5,
                    "{text:?} got confidence {}",
                    p.confidence
                );
            }
        }
    }

    #[test]
    fn long_input_is_truncated() {
        let model = EmbeddedModel::train(&demo_tenant());
        let long = "invoice ".repeat(200_000);
        let truncated: String = long
            .chars()
            .take(TrainConfig::default().max_input_chars)
            .collect();
        assert_eq!(model.classify(&long), model.classify(&truncated));
    }

    #[test]
    fn department_only_tenant_routes_obvious_messages() {
        let model = EmbeddedModel::train(&demo_tenant());
        assert_eq!(model.num_classes(), 4);
        for (text, want) in [
            ("I want to know the price", "Sales"),
            ("my invoice is wrong", "Billing"),
            ("the app crashes when I log in", "Support"),
            ("how much is the pro plan?", "Sales"),
            ("I was charged twice, please refund me", "Billing"),
            ("what time do you open?", "General"),
        ] {
            let p = model.classify(text);
            assert_eq!(p.department, want, "{text:?} -> {p:?}");
            assert_eq!(p.intent, None);
        }
    }

    #[test]
    fn intents_map_to_their_departments() {
        let set = TrainingSet {
            departments: vec![Department {
                name: "Cards".into(),
                description: String::new(),
                examples: Vec::new(),
            }],
            intents: vec![
                Intent {
                    name: "card_lost".into(),
                    department: "Cards".into(),
                    examples: vec!["I lost my card".into(), "my card was stolen".into()],
                },
                Intent {
                    name: "refund".into(),
                    // Not listed in `departments`: created implicitly.
                    department: "Billing".into(),
                    examples: vec!["I want my money back".into(), "refund my order".into()],
                },
            ],
        };
        let model = EmbeddedModel::train(&set);
        assert_eq!(model.departments(), ["Cards", "Billing"]);
        let p = model.classify("someone stole my card");
        assert_eq!(
            (p.department.as_str(), p.intent.as_deref()),
            ("Cards", Some("card_lost"))
        );
        let p = model.classify("please refund my money");
        assert_eq!(
            (p.department.as_str(), p.intent.as_deref()),
            ("Billing", Some("refund"))
        );
    }

    #[test]
    fn degenerate_training_sets_do_not_panic() {
        let empty = EmbeddedModel::train(&TrainingSet::default());
        let p = empty.classify("hello");
        assert_eq!(p.confidence, 0.0);

        let no_examples = TrainingSet {
            departments: vec![Department {
                name: "Only".into(),
                description: String::new(),
                examples: Vec::new(),
            }],
            intents: Vec::new(),
        };
        let model = EmbeddedModel::train_with(
            &no_examples,
            &TrainConfig {
                learn_from_names: 0,
                ..TrainConfig::default()
            },
        );
        let p = model.classify("hello");
        assert_eq!(p.department, "Only");
        assert!((0.0..=1.0).contains(&p.confidence));

        let single = EmbeddedModel::train(&TrainingSet {
            departments: vec![Department {
                name: "Only".into(),
                description: "everything".into(),
                examples: vec!["hi there".into()],
            }],
            intents: Vec::new(),
        });
        assert_eq!(single.classify("").department, "Only");
    }

    #[test]
    fn training_set_deserialises_with_defaults() {
        let json = r#"{"departments": [{"name": "Sales", "examples": ["price?"]}],
                       "intents": [{"name": "buy", "department": "Sales"}]}"#;
        let set: TrainingSet = serde_json::from_str(json).expect("valid training set");
        assert_eq!(set.departments[0].description, "");
        assert!(set.intents[0].examples.is_empty());
    }

    #[test]
    fn humanize_splits_label_names() {
        assert_eq!(humanize("card_not_working"), "card not working");
        assert_eq!(humanize("TopUpFailed"), "Top Up Failed");
        assert_eq!(humanize("reverted_card_payment?"), "reverted card payment?");
    }
}

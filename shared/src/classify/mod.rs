//! Deciding which department a customer's message goes to.
//!
//! A [`Classifier`] reads one message against one business's departments and names a
//! department, an optional finer intent and its confidence. A [`Chain`] asks several
//! classifiers in order (the LLM first, when one is configured) and always ends with an
//! answer: when every classifier fails, or the one that answers is not confident enough,
//! the business's fallback department takes the conversation.
//!
//! Classifiers never log the customer's text or any credential above trace level; the
//! chain logs only the business, the classifier and why it fell through.

pub mod embedded;
pub mod eval;
pub mod llm;

use std::sync::Arc;

use crate::tenants::{BusinessConfig, DepartmentConfig};

/// Who decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassifierKind {
    /// A large language model behind an HTTP API.
    Llm,
    /// A model running in this process.
    Embedded,
    /// No classifier answered confidently, so the business's fallback department was used.
    Fallback,
}

impl ClassifierKind {
    /// The lowercase name, as stored and logged.
    pub fn as_str(self) -> &'static str {
        match self {
            ClassifierKind::Llm => "llm",
            ClassifierKind::Embedded => "embedded",
            ClassifierKind::Fallback => "fallback",
        }
    }
}

impl std::fmt::Display for ClassifierKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A business's routing setup, as the classifiers see it.
#[derive(Debug, Clone)]
pub struct BusinessProfile {
    /// The business, for logs.
    pub business_id: String,
    /// The departments a message may go to; a classifier answers with one of their names.
    pub departments: Vec<DepartmentConfig>,
    /// The department that takes what cannot be classified confidently.
    pub fallback_department: String,
    /// Confidence below which the fallback department is used; see [`Chain`].
    pub confidence_threshold: f64,
}

impl BusinessProfile {
    /// The profile of a business configured as `config`.
    pub fn from_config(business_id: impl Into<String>, config: &BusinessConfig) -> BusinessProfile {
        BusinessProfile {
            business_id: business_id.into(),
            departments: config.departments.clone(),
            fallback_department: config.fallback_department.clone(),
            confidence_threshold: config.confidence_threshold,
        }
    }

    /// The department names, in configured order.
    pub fn department_names(&self) -> impl Iterator<Item = &str> {
        self.departments.iter().map(|d| d.name.as_str())
    }

    /// Whether `name` is exactly one of the department names.
    pub fn has_department(&self, name: &str) -> bool {
        self.department_names().any(|d| d == name)
    }
}

/// Where a message goes, and who decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    /// One of the business's department names.
    pub department: String,
    /// A finer-grained label of what the customer wants, when the classifier gave one.
    pub intent: Option<String>,
    /// How sure the classifier was, from 0 to 1.
    pub confidence: f64,
    /// Who decided.
    pub classifier: ClassifierKind,
}

/// Why a classifier gave no answer.
///
/// Messages never contain the customer's text or a credential, so they are safe to log.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// The classifier did not answer within its time limit.
    #[error("the classifier did not answer in time")]
    Timeout,
    /// The classifier's service answered with an error status.
    #[error("the classifier service answered HTTP {status}")]
    Http {
        /// The HTTP status code.
        status: u16,
    },
    /// The answer could not be understood; the message says what was wrong with it.
    #[error("malformed classifier answer: {0}")]
    Malformed(String),
    /// The answer named a department the business does not have.
    #[error("the classifier named a department that is not offered: {0:?}")]
    OutOfSet(String),
    /// The model declined to classify the message.
    #[error("the model refused to classify the message")]
    Refused,
    /// The model stopped before finishing its answer, for the reason given.
    #[error("the model stopped early: {0}")]
    Incomplete(String),
    /// The service could not be reached or the exchange broke off.
    #[error("could not reach the classifier: {0}")]
    Transport(String),
    /// The classifier cannot work at all right now, for the reason given.
    #[error("the classifier is unavailable: {0}")]
    Unavailable(String),
}

/// Something that routes a message to one of a business's departments.
#[async_trait::async_trait]
pub trait Classifier: Send + Sync {
    /// Which kind of classifier this is, for the record of who decided.
    fn kind(&self) -> ClassifierKind;

    /// Classifies `text` for `business`. An `Ok` names one of the business's departments.
    async fn classify(
        &self,
        business: &BusinessProfile,
        text: &str,
    ) -> Result<Classification, ClassifyError>;
}

/// Runs classifiers in order and always decides.
///
/// The rule, precisely:
///
/// 1. Classifiers are asked one at a time, in the order given. An `Err` falls through to
///    the next one. So does an `Ok` naming a department the business does not have
///    (counted as [`ClassifyError::OutOfSet`]), because the chain must never route to a
///    department that does not exist, whatever a classifier does.
/// 2. The first valid `Ok` wins, and no later classifier is asked, even when its
///    confidence is low: a confident "I don't know" is an answer, not a failure.
/// 3. If the winner's confidence is at least `business.confidence_threshold`
///    (`confidence >= threshold`), its classification is the result as it is.
///    Otherwise (including a NaN confidence) the result is the fallback department with
///    `classifier: Fallback`, `intent: None`, and the winner's low confidence kept (clamped
///    to 0..=1, NaN stored as 0), so the record shows both that the fallback decided and
///    how unsure the classifier was.
/// 4. If every classifier fails, or there are none, the result is the fallback department
///    with `classifier: Fallback`, `intent: None` and `confidence: 0.0`.
///
/// Each fall-through is logged at warn with the business, the classifier and the cause;
/// never the customer's text.
pub struct Chain {
    classifiers: Vec<Arc<dyn Classifier>>,
}

impl Chain {
    /// A chain that asks `classifiers` in this order.
    pub fn new(classifiers: Vec<Arc<dyn Classifier>>) -> Chain {
        Chain { classifiers }
    }

    /// The product's chain: the LLM when one is configured, then the embedded
    /// classifier, then the fallback department.
    pub fn standard(llm: Option<llm::LlmConfig>) -> Result<Chain, ClassifyError> {
        let mut classifiers: Vec<Arc<dyn Classifier>> = Vec::new();
        if let Some(config) = llm {
            classifiers.push(Arc::new(llm::LlmClassifier::new(config)?));
        }
        classifiers.push(Arc::new(EmbeddedClassifier::new()));
        Ok(Chain::new(classifiers))
    }

    /// Decides where `text` goes. Never fails: the fallback department is the last word.
    pub async fn classify(&self, business: &BusinessProfile, text: &str) -> Classification {
        for classifier in &self.classifiers {
            let kind = classifier.kind();
            let result = match classifier.classify(business, text).await {
                Ok(found) if !business.has_department(&found.department) => {
                    Err(ClassifyError::OutOfSet(shortened(&found.department)))
                }
                other => other,
            };
            match result {
                Ok(found) if found.confidence >= business.confidence_threshold => return found,
                Ok(found) => {
                    tracing::debug!(
                        business = %business.business_id,
                        classifier = kind.as_str(),
                        confidence = found.confidence,
                        threshold = business.confidence_threshold,
                        "confidence below the threshold; using the fallback department"
                    );
                    // A NaN or out-of-range confidence must not reach storage as it is.
                    let kept = if found.confidence.is_finite() {
                        found.confidence.clamp(0.0, 1.0)
                    } else {
                        0.0
                    };
                    return fallback(business, kept);
                }
                Err(err) => {
                    tracing::warn!(
                        business = %business.business_id,
                        classifier = kind.as_str(),
                        cause = %err,
                        "classifier failed; falling through"
                    );
                }
            }
        }
        fallback(business, 0.0)
    }
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<ClassifierKind> = self.classifiers.iter().map(|c| c.kind()).collect();
        f.debug_struct("Chain")
            .field("classifiers", &kinds)
            .finish()
    }
}

fn fallback(business: &BusinessProfile, confidence: f64) -> Classification {
    Classification {
        department: business.fallback_department.clone(),
        intent: None,
        confidence,
        classifier: ClassifierKind::Fallback,
    }
}

/// Longest piece of a classifier's answer quoted in an error.
const MAX_QUOTED_CHARS: usize = 64;

/// `text` cut to a length fit for an error message, since a misbehaving classifier's
/// answer could be long or echo the customer's text.
pub(crate) fn shortened(text: &str) -> String {
    let mut out: String = text.chars().take(MAX_QUOTED_CHARS).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// The embedded classifier behind the [`Classifier`] interface: a model trained in this
/// process from each business's departments, cached per business and trained again
/// when the departments change.
#[derive(Default)]
pub struct EmbeddedClassifier {
    models: std::sync::Mutex<std::collections::HashMap<String, CachedModel>>,
}

/// A business's model, trained once by whichever request needs it first.
struct CachedModel {
    /// The departments it was trained from. Comparing them is a memory compare; hashing
    /// a serialised copy on every message would cost more than classifying.
    departments: Vec<DepartmentConfig>,
    model: Arc<tokio::sync::OnceCell<Arc<embedded::EmbeddedModel>>>,
}

impl EmbeddedClassifier {
    /// An empty cache.
    pub fn new() -> EmbeddedClassifier {
        EmbeddedClassifier::default()
    }

    async fn model(
        &self,
        business: &BusinessProfile,
    ) -> Result<Arc<embedded::EmbeddedModel>, ClassifyError> {
        let cell = {
            let mut models = self.models.lock().expect("model cache lock");
            let cached = models.get(&business.business_id);
            match cached {
                Some(cached) if cached.departments == business.departments => cached.model.clone(),
                _ => {
                    let model = Arc::new(tokio::sync::OnceCell::new());
                    models.insert(
                        business.business_id.clone(),
                        CachedModel {
                            departments: business.departments.clone(),
                            model: model.clone(),
                        },
                    );
                    model
                }
            }
        };
        let model = cell
            .get_or_try_init(|| {
                let set = training_set(&business.departments);
                let business_id = business.business_id.clone();
                async move {
                    // Training takes CPU for up to a second or two: off the async workers.
                    let started = std::time::Instant::now();
                    let model =
                        tokio::task::spawn_blocking(move || embedded::EmbeddedModel::train(&set))
                            .await
                            .map_err(|err| ClassifyError::Unavailable(err.to_string()))?;
                    tracing::info!(
                        business = %business_id,
                        classes = model.num_classes(),
                        train_ms = started.elapsed().as_millis() as u64,
                        "trained the embedded classifier"
                    );
                    Ok::<_, ClassifyError>(Arc::new(model))
                }
            })
            .await?;
        Ok(model.clone())
    }
}

/// The embedded model's training set for a business's departments: each department's
/// description and examples, and its intents when it has them.
pub fn training_set(departments: &[DepartmentConfig]) -> embedded::TrainingSet {
    embedded::TrainingSet {
        departments: departments
            .iter()
            .map(|d| embedded::Department {
                name: d.name.clone(),
                description: d.description.clone(),
                examples: d.examples.clone(),
            })
            .collect(),
        intents: departments
            .iter()
            .flat_map(|d| {
                d.intents.iter().map(|i| embedded::Intent {
                    name: i.name.clone(),
                    department: d.name.clone(),
                    examples: i.examples.clone(),
                })
            })
            .collect(),
    }
}

#[async_trait::async_trait]
impl Classifier for EmbeddedClassifier {
    fn kind(&self) -> ClassifierKind {
        ClassifierKind::Embedded
    }

    async fn classify(
        &self,
        business: &BusinessProfile,
        text: &str,
    ) -> Result<Classification, ClassifyError> {
        let model = self.model(business).await?;
        let prediction = model.classify(text);
        Ok(Classification {
            department: prediction.department,
            intent: prediction.intent,
            confidence: f64::from(prediction.confidence),
            classifier: ClassifierKind::Embedded,
        })
    }
}

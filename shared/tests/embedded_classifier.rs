//! The embedded classifier behind the classifier interface, alone and in the chain.

use chat_router::classify::{
    BusinessProfile, Chain, Classifier, ClassifierKind, EmbeddedClassifier,
};
use chat_router::tenants::BusinessConfig;

fn demo() -> BusinessProfile {
    let config: BusinessConfig =
        serde_json::from_str(include_str!("../../tenants/demo.json")).unwrap();
    BusinessProfile::from_config("demo", &config)
}

fn bank() -> BusinessProfile {
    let config: BusinessConfig =
        serde_json::from_str(include_str!("../../tenants/bank.json")).unwrap();
    BusinessProfile::from_config("bank", &config)
}

#[tokio::test]
async fn the_demo_tenant_routes_obvious_messages() {
    let classifier = EmbeddedClassifier::new();
    let business = demo();
    for (text, department) in [
        ("I want to know the price", "Sales"),
        ("how much is the pro plan for a team of ten?", "Sales"),
        ("my invoice is wrong", "Billing"),
        ("I was charged twice, please refund me", "Billing"),
        ("the app crashes when I log in", "Support"),
        ("I can't reset my password", "Support"),
    ] {
        let found = classifier.classify(&business, text).await.unwrap();
        assert_eq!(found.department, department, "{text}: {found:?}");
        assert_eq!(found.classifier, ClassifierKind::Embedded);
        assert!((0.0..=1.0).contains(&found.confidence));
    }
}

#[tokio::test]
async fn intents_are_predicted_and_departments_derived_for_the_bank() {
    let classifier = EmbeddedClassifier::new();
    let business = bank();
    let found = classifier
        .classify(&business, "I lost my card, someone might be using it")
        .await
        .unwrap();
    assert_eq!(found.department, "Cards", "{found:?}");
    assert!(found.intent.is_some(), "{found:?}");
    let found = classifier
        .classify(&business, "what exchange rate do you use for euros?")
        .await
        .unwrap();
    assert_eq!(found.department, "Exchange", "{found:?}");
}

#[tokio::test]
async fn the_model_is_cached_and_retrained_when_departments_change() {
    let classifier = EmbeddedClassifier::new();
    let mut business = demo();
    let before = classifier
        .classify(&business, "do you sell gift cards?")
        .await
        .unwrap();
    assert_ne!(before.department, "Gifts");

    business
        .departments
        .push(chat_router::tenants::DepartmentConfig {
            name: "Gifts".into(),
            description: "Gift cards and vouchers".into(),
            examples: vec![
                "do you sell gift cards?".into(),
                "can I buy a voucher for a friend".into(),
                "gift card balance".into(),
            ],
            intents: vec![],
        });
    let after = classifier
        .classify(&business, "do you sell gift cards?")
        .await
        .unwrap();
    assert_eq!(after.department, "Gifts", "{after:?}");
}

#[tokio::test]
async fn unrelated_text_falls_back_through_the_chain() {
    let chain = Chain::standard(None).unwrap();
    let business = demo();
    for text in [
        "",
        "?!?!",
        "🙂🙂",
        "la météo sur mars est froide",
        "火星上的天气很冷",
    ] {
        let found = chain.classify(&business, text).await;
        assert_eq!(found.department, "General", "{text:?}: {found:?}");
        assert_eq!(
            found.classifier,
            ClassifierKind::Fallback,
            "{text:?}: {found:?}"
        );
    }
    let found = chain.classify(&business, "my invoice is wrong").await;
    assert_eq!(
        (found.department.as_str(), found.classifier),
        ("Billing", ClassifierKind::Embedded)
    );
}

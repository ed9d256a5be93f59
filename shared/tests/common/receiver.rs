//! A callback receiver for tests: a real HTTP server on 127.0.0.1, port 0, that
//! answers as scripted and records what it received.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chat_router::callback::{DELIVERY_HEADER, SIGNATURE_HEADER};
use serde_json::Value;

/// What the receiver does with one request.
#[derive(Clone)]
pub enum Answer {
    Status(u16),
    RetryAfter(u16, &'static str),
    SlowThen(Duration, u16),
    Redirect,
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub signature: String,
    pub delivery_id: String,
    pub body: Vec<u8>,
    pub at: Instant,
    pub answered: u16,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Clone, Default)]
pub struct Script {
    answers: Arc<Mutex<VecDeque<Answer>>>,
    received: Arc<Mutex<Vec<Received>>>,
    /// Requests that reached the target of a redirect.
    pub followed: Arc<Mutex<usize>>,
}

impl Script {
    pub fn then(&self, answers: impl IntoIterator<Item = Answer>) {
        self.answers.lock().unwrap().extend(answers);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Drops the answers not yet given: from now on every request gets a 200.
    pub fn answer_ok_from_now(&self) {
        self.answers.lock().unwrap().clear();
    }
}

async fn hook(State(script): State<Script>, headers: HeaderMap, body: Bytes) -> Response {
    let answer = script
        .answers
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Answer::Status(200));
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let status = match &answer {
        Answer::Status(s) | Answer::RetryAfter(s, _) | Answer::SlowThen(_, s) => *s,
        Answer::Redirect => 307,
    };
    script.received.lock().unwrap().push(Received {
        signature: header(SIGNATURE_HEADER),
        delivery_id: header(DELIVERY_HEADER),
        body: body.to_vec(),
        at: Instant::now(),
        answered: status,
    });
    let code = StatusCode::from_u16(status).unwrap();
    match answer {
        Answer::Status(_) => code.into_response(),
        Answer::RetryAfter(_, after) => (code, [("retry-after", after)]).into_response(),
        Answer::SlowThen(wait, _) => {
            tokio::time::sleep(wait).await;
            code.into_response()
        }
        Answer::Redirect => (code, [("location", "/elsewhere")]).into_response(),
    }
}

async fn elsewhere(State(script): State<Script>) -> StatusCode {
    *script.followed.lock().unwrap() += 1;
    StatusCode::OK
}

/// A receiver on 127.0.0.1, port 0; returns its hook URL.
pub async fn receiver(script: Script) -> String {
    use axum::routing::post;
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .route("/elsewhere", post(elsewhere).get(elsewhere))
        .with_state(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

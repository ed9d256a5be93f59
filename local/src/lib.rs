//! The local side of chat-router: the whole product in one process ([`app`]), the
//! gateway that serves the Lambda handlers over real HTTP ([`gateway`]) and WebSockets
//! ([`ws`]), and the demo tenant. The
//! `chat-router` binary adds the admin commands.

pub mod app;
pub mod demo;
pub mod gateway;
pub mod ws;

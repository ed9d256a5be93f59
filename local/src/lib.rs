//! The local side of chat-router: the gateway that serves the Lambda handlers over
//! real HTTP, and the demo tenant. The `chat-router` binary adds the admin commands.

pub mod demo;
pub mod gateway;

//! Sends each request to td-auth's routes, to the data services, or to a 404, the way
//! Truedat's ingress splits one origin between its services.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request};
use hyper::body::Incoming;

use super::body::{self, Reply};
use super::state::State;
use super::{auth, data};

/// Where a request goes.
enum Route {
    Login,
    Refresh,
    CheckSession,
    Logout,
    Ping,
    /// Any other `/api/` path (td-auth's own `/api/sessions…` excepted).
    Data,
    NotFound,
}

impl Route {
    fn of(method: &Method, path: &str) -> Route {
        match (method, path) {
            (&Method::POST, "/api/sessions") => Route::Login,
            (&Method::POST, "/api/sessions/refresh") => Route::Refresh,
            (&Method::GET, "/api/sessions") => Route::CheckSession,
            (&Method::DELETE, "/api/sessions") => Route::Logout,
            (&Method::GET, "/api/ping") => Route::Ping,
            (_, "/api/ping") => Route::NotFound,
            _ if is_session_path(path) => Route::NotFound,
            _ if path.starts_with("/api/") => Route::Data,
            _ => Route::NotFound,
        }
    }
}

/// td-auth owns `/api/sessions` and below: other methods or sub-paths are its 404s,
/// not data routes.
fn is_session_path(path: &str) -> bool {
    path == "/api/sessions" || path.starts_with("/api/sessions/")
}

/// The fake's hyper service; every failure is already a response.
pub(super) async fn handle(state: Arc<State>, request: Request<Incoming>) -> Result<Reply, Infallible> {
    let reply = match Route::of(request.method(), request.uri().path()) {
        Route::Login => state.fleet.timed(auth::login(&state, request)).await,
        Route::Refresh => auth::refresh(&state, request.headers()),
        Route::CheckSession => auth::check(&state, request.headers()),
        Route::Logout => auth::logout(&state, request.headers()),
        Route::Ping => state.fleet.pong(),
        Route::Data => data::handle(&state, request).await,
        Route::NotFound => body::not_found(),
    };
    Ok(reply)
}

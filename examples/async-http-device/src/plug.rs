//! A stand-in smart plug: a real HTTP server on loopback with the REST API
//! of [`smart_plug`](crate::smart_plug), for trying the example without one.
//!
//! - `GET /api/relay` answers the [`Relay`] as JSON;
//! - `PUT /api/relay` with a [`SetRelay`] switches it and answers the new one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use tracing::info;

use crate::{Relay, SetRelay};

/// What the load draws when the plug is on.
pub const LOAD_W: f64 = 42.5;

/// A running stand-in plug; [`Plug::stop`] ends it.
pub struct Plug {
    addr: SocketAddr,
    handle: ServerHandle,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    on: Mutex<bool>,
    /// `GET /api/relay`, `PUT /api/relay on=true`, ... in arrival order.
    requests: Mutex<Vec<String>>,
}

impl State {
    fn relay(&self) -> Relay {
        let on = *self.on.lock().unwrap_or_else(|e| e.into_inner());
        Relay {
            on,
            power_w: if on { LOAD_W } else { 0.0 },
        }
    }

    fn set(&self, on: bool) {
        *self.on.lock().unwrap_or_else(|e| e.into_inner()) = on;
    }

    fn saw(&self, request: String) {
        info!(%request, "plug: request");
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).push(request);
    }
}

async fn get_relay(state: web::Data<State>) -> HttpResponse {
    state.saw("GET /api/relay".into());
    HttpResponse::Ok().json(state.relay())
}

async fn put_relay(state: web::Data<State>, set: web::Json<SetRelay>) -> HttpResponse {
    state.saw(format!("PUT /api/relay on={}", set.on));
    state.set(set.on);
    HttpResponse::Ok().json(state.relay())
}

impl Plug {
    /// Listens on `addr` (port 0 picks a free one), switched off. Must be
    /// called inside an actix system.
    pub fn start(addr: SocketAddr) -> std::io::Result<Plug> {
        let state = web::Data::new(State::default());
        let shared = state.clone().into_inner();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route("/api/relay", web::get().to(get_relay))
                .route("/api/relay", web::put().to(put_relay))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .bind(addr)?;
        let addr = server.addrs().first().copied().unwrap_or(addr);
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Ok(Plug {
            addr,
            handle,
            state: shared,
        })
    }

    /// `http://127.0.0.1:PORT`, what the plugin's `url` setting takes.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Someone pressed the plug's own button: it toggles, and only polling
    /// can tell the platform.
    pub fn press_button(&self) -> Relay {
        let on = !self.state.relay().on;
        self.state.set(on);
        info!(on, "plug: the button was pressed");
        self.state.relay()
    }

    /// The requests the plug got so far, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

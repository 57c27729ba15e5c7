//! The platform's plain HTTP endpoints (PROTOCOL.md sections 2 and 6):
//! lookup, device registration and unregistration, and [`configure`], which
//! puts every route of the simulator (these, `/ws` and `/control`) on one
//! actix-web app.

use std::sync::{atomic::Ordering, Arc};

use actix_web::{
    http::{header::ContentType, StatusCode},
    web, HttpRequest, HttpResponse,
};
use serde_json::json;

use crate::{
    control,
    session::ws_handler,
    state::Shared,
    wire::{percent_decode, Credentials, RegistrationBody, UnregistrationBody},
};

/// Largest registration body accepted: batches can be big.
const MAX_REGISTRATION_BODY: usize = 4 * 1024 * 1024;

/// Registers every route on an app.
pub(crate) fn configure(shared: Arc<Shared>) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg: &mut web::ServiceConfig| {
        let lookup = format!("/{}", shared.config.lookup_path);
        let registration = format!("/{}", shared.config.registration_path);
        cfg.app_data(web::Data::new(Arc::clone(&shared)))
            .app_data(web::PayloadConfig::new(MAX_REGISTRATION_BODY))
            .route(&lookup, web::get().to(lookup_handler))
            .route("/ws", web::get().to(ws_handler))
            .route(&registration, web::post().to(register_handler))
            .route(
                &format!("{registration}/{{id:.*}}"),
                web::delete().to(unregister_handler),
            )
            .service(web::scope("/control").configure(control::configure));
    }
}

/// A JSON error answer: `{"error": "..."}` plus any extra fields.
pub(crate) fn error_json(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message }))
}

/// `GET /lookup`: the socket URL as plain text.
async fn lookup_handler(req: HttpRequest, shared: web::Data<Arc<Shared>>) -> HttpResponse {
    if let Some(status) = shared.faults.take_lookup() {
        shared.bump(&shared.counters.lookups_failed);
        tracing::info!(status, "lookup_failure_injected");
        return injected(status);
    }
    shared.bump(&shared.counters.lookups);
    HttpResponse::Ok()
        .content_type(ContentType::plaintext())
        .body(socket_url_for(&req, &shared))
}

/// The socket URL a client should use: the bound address, or, when bound
/// to a wildcard address, the host the client itself asked for; `wss://`
/// in TLS mode.
fn socket_url_for(req: &HttpRequest, shared: &Shared) -> String {
    let addr = shared.local_addr;
    let scheme = if shared.config.tls.is_some() { "wss" } else { "ws" };
    if addr.ip().is_unspecified() {
        let info = req.connection_info();
        let host = info.host();
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        format!("{scheme}://{host}:{}/ws", addr.port())
    } else {
        format!("{scheme}://{addr}/ws")
    }
}

fn injected(status: u16) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    HttpResponse::build(status)
        .content_type(ContentType::plaintext())
        .body("failure injected by the simulator")
}

/// Credentials check shared by both registration routes.
fn credentials_ok(shared: &Shared, credentials: &Credentials) -> bool {
    !shared.faults.refuse_credentials.load(Ordering::Relaxed)
        && credentials.user == shared.config.user
        && credentials.pw == shared.config.password
}

/// `POST /<registration path>`: registers a batch of devices.
async fn register_handler(shared: web::Data<Arc<Shared>>, body: web::Bytes) -> HttpResponse {
    let counters = &shared.counters;
    if let Some(status) = shared.faults.take_registration() {
        shared.bump(&counters.registrations_failed);
        tracing::info!(status, "registration_failure_injected");
        return injected(status);
    }
    let body: RegistrationBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) => {
            shared.bump(&counters.registrations_failed);
            tracing::warn!(%error, "registration_bad_body");
            return error_json(
                StatusCode::BAD_REQUEST,
                &format!("registration body must be {{\"credentials\":{{..}},\"devices\":[..]}}: {error}"),
            );
        }
    };
    if !credentials_ok(&shared, &body.credentials) {
        shared.bump(&counters.registrations_failed);
        tracing::warn!(user = %body.credentials.user, "registration_credentials_refused");
        return error_json(StatusCode::UNAUTHORIZED, "credentials refused");
    }
    if let Some(device) = body.devices.iter().find(|d| d.id.is_empty()) {
        shared.bump(&counters.registrations_failed);
        tracing::warn!(title = %device.title, "registration_empty_device_id");
        return error_json(StatusCode::BAD_REQUEST, "a device has an empty id");
    }
    let ids: Vec<String> = body.devices.iter().map(|d| d.id.clone()).collect();
    let n = shared.register(body.devices);
    shared.bump(&counters.registrations);
    counters.devices_registered.fetch_add(n as u64, Ordering::Relaxed);
    tracing::info!(devices = n, "devices_registered");
    HttpResponse::Ok().json(json!({ "registered": ids }))
}

/// `DELETE /<registration path>/<percent-encoded id>`: unregisters one device.
async fn unregister_handler(req: HttpRequest, shared: web::Data<Arc<Shared>>, body: web::Bytes) -> HttpResponse {
    let counters = &shared.counters;
    if let Some(status) = shared.faults.take_registration() {
        shared.bump(&counters.unregistrations_failed);
        tracing::info!(status, "unregistration_failure_injected");
        return injected(status);
    }
    // The raw path, not the router's match: only this way does an id with
    // an encoded '/' come out right.
    let prefix = format!("/{}/", shared.config.registration_path);
    let raw = req.uri().path().strip_prefix(&prefix).unwrap_or("");
    let Some(id) = percent_decode(raw).filter(|id| !id.is_empty()) else {
        shared.bump(&counters.unregistrations_failed);
        return error_json(StatusCode::BAD_REQUEST, "missing or badly encoded device id");
    };
    let body: UnregistrationBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) => {
            shared.bump(&counters.unregistrations_failed);
            tracing::warn!(%error, "unregistration_bad_body");
            return error_json(
                StatusCode::UNAUTHORIZED,
                &format!("unregistration needs a body {{\"credentials\":{{..}}}}: {error}"),
            );
        }
    };
    if !credentials_ok(&shared, &body.credentials) {
        shared.bump(&counters.unregistrations_failed);
        tracing::warn!(user = %body.credentials.user, "unregistration_credentials_refused");
        return error_json(StatusCode::UNAUTHORIZED, "credentials refused");
    }
    if shared.unregister(&id) {
        shared.bump(&counters.unregistrations);
        tracing::info!(device_id = %id, "device_unregistered");
        HttpResponse::Ok().json(json!({ "unregistered": id }))
    } else {
        shared.bump(&counters.unregistrations_unknown);
        tracing::info!(device_id = %id, "unregister_unknown_device");
        error_json(StatusCode::NOT_FOUND, "device not registered")
    }
}

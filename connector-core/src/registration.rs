//! The HTTP side of device registration (PROTOCOL.md section 6): request
//! bodies, URLs, and what each answer status means. No IO here.

use serde::Serialize;

use crate::model::Device;
use crate::secret::Credentials;

#[derive(Serialize)]
struct WireCredentials<'a> {
    user: &'a str,
    pw: &'a str,
}

impl<'a> From<&'a Credentials> for WireCredentials<'a> {
    fn from(credentials: &'a Credentials) -> Self {
        WireCredentials {
            user: &credentials.user,
            pw: credentials.password.expose(),
        }
    }
}

#[derive(Serialize)]
struct WireDevice<'a> {
    id: &'a str,
    zway_type: &'a str,
    title: &'a str,
}

#[derive(Serialize)]
struct RegisterBody<'a> {
    credentials: WireCredentials<'a>,
    devices: Vec<WireDevice<'a>>,
}

#[derive(Serialize)]
struct UnregisterBody<'a> {
    credentials: WireCredentials<'a>,
}

/// The JSON body that registers a batch of devices in one request. Takes
/// anything that lends a [`Device`] so a caller can keep its devices shared.
pub fn register_body<D: std::borrow::Borrow<Device>>(credentials: &Credentials, devices: &[D]) -> String {
    let body = RegisterBody {
        credentials: credentials.into(),
        devices: devices
            .iter()
            .map(|d| d.borrow())
            .map(|d| WireDevice {
                id: &d.id,
                zway_type: &d.device_type,
                title: &d.name,
            })
            .collect(),
    };
    serde_json::to_string(&body).expect("a struct of strings always serializes")
}

/// The JSON body of an unregistration: the credentials alone.
pub fn unregister_body(credentials: &Credentials) -> String {
    let body = UnregisterBody {
        credentials: credentials.into(),
    };
    serde_json::to_string(&body).expect("a struct of strings always serializes")
}

/// `BASE/PATH`, with exactly one slash between them.
pub fn register_url(base: &str, registration_path: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), registration_path.trim_matches('/'))
}

/// `BASE/PATH/<percent-encoded device id>`.
pub fn unregister_url(base: &str, registration_path: &str, device_id: &str) -> String {
    format!(
        "{}/{}",
        register_url(base, registration_path),
        crate::http::percent_encode(device_id)
    )
}

/// What an answer to a (un)registration request means for the connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done: send `update`.
    Done,
    /// 401/403: the credentials were refused; retrying soon will not help.
    CredentialsRefused,
    /// Anything else: retry with back-off and report it.
    Retry,
}

/// Which [`Outcome`] a status is. For an unregistration a `404` means the
/// device is already gone, which is what was asked.
pub fn outcome(status: u16, unregister: bool) -> Outcome {
    match status {
        200..=299 => Outcome::Done,
        404 if unregister => Outcome::Done,
        401 | 403 => Outcome::CredentialsRefused,
        _ => Outcome::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_body_holds_the_credentials_and_the_whole_batch() {
        let credentials = Credentials::new("alice", "s3cret");
        let devices = [
            Device::new("lamp-1", "lamp", "Lamp"),
            Device::new("plug \"2\"", "plug", "Plug"),
        ];
        let body: serde_json::Value = serde_json::from_str(&register_body(&credentials, &devices)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "credentials": {"user": "alice", "pw": "s3cret"},
                "devices": [
                    {"id": "lamp-1", "zway_type": "lamp", "title": "Lamp"},
                    {"id": "plug \"2\"", "zway_type": "plug", "title": "Plug"},
                ]
            })
        );
    }

    #[test]
    fn unregister_body_holds_only_the_credentials() {
        let body = unregister_body(&Credentials::new("", ""));
        assert_eq!(body, r#"{"credentials":{"user":"","pw":""}}"#);
    }

    #[test]
    fn urls_join_with_one_slash_and_encode_the_device_id() {
        let table = [
            ("http://h:1", "discovery", "a", "http://h:1/discovery/a"),
            ("http://h:1/", "/discovery/", "a b", "http://h:1/discovery/a%20b"),
            (
                "https://h:1",
                "api/devices",
                "x/y?z#",
                "https://h:1/api/devices/x%2Fy%3Fz%23",
            ),
            ("http://h:1", "discovery", "café", "http://h:1/discovery/caf%C3%A9"),
            ("http://h:1", "discovery", "a-b.c_d~e", "http://h:1/discovery/a-b.c_d~e"),
        ];
        for (base, path, id, expected) in table {
            assert_eq!(unregister_url(base, path, id), expected);
        }
        assert_eq!(register_url("http://h:1/", "discovery"), "http://h:1/discovery");
    }

    #[test]
    fn statuses_map_to_outcomes() {
        let table = [
            (200, false, Outcome::Done),
            (204, true, Outcome::Done),
            (404, true, Outcome::Done),
            (404, false, Outcome::Retry),
            (401, false, Outcome::CredentialsRefused),
            (403, true, Outcome::CredentialsRefused),
            (500, false, Outcome::Retry),
            (503, true, Outcome::Retry),
            (400, false, Outcome::Retry),
        ];
        for (status, unregister, expected) in table {
            assert_eq!(outcome(status, unregister), expected, "{status} {unregister}");
        }
    }
}

//! Graceful shutdown: what is buffered goes out while the link is up, and the
//! session ends with a close frame rather than a dropped connection.

mod util;

use std::time::Duration;

use connector_core::Message;
use util::*;

#[actix_rt::test]
async fn shutdown_flushes_the_buffer_and_closes_the_session_cleanly() {
    let sim = simulator().await;
    let connector = connected(&sim, config_for(&sim, ECHO_DEVICES)).await;
    for i in 0..1000 {
        connector
            .send(Message::event("lamp-1", "level", i.to_string()))
            .unwrap();
    }
    connector.shutdown(Duration::from_secs(5)).await;

    let counters = eventually("the session to close", || async {
        let c = sim.counters().await;
        (c.sessions_closed == 1).then_some(c)
    })
    .await;
    assert_eq!(
        counters.changes, 1000,
        "every buffered event was flushed before the close: {counters:?}"
    );
    assert_eq!(counters.close_frames, 1, "the connector sent a close frame");
}

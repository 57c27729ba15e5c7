//! A real MQTT broker for tests and benchmarks: mosquitto, started on a
//! free loopback port, killed and started again on the same port to play a
//! broker restart. The simulator fronts it rather than embedding a broker of
//! its own, so what a connector meets is the broker people run.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian and others install the broker.
const PLACES: [&str; 4] = [
    "/usr/sbin/mosquitto",
    "/usr/bin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/usr/local/bin/mosquitto",
];
/// How long a start may take to listen, on a loaded machine.
const LISTEN_WAIT: Duration = Duration::from_secs(30);

/// A running (or stopped) mosquitto of our own; killed when dropped.
pub struct Mosquitto {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// The installed broker, if there is one.
    pub fn binary() -> Option<PathBuf> {
        PLACES.iter().map(PathBuf::from).find(|path| path.exists())
    }

    /// Starts a broker on a free loopback port, anonymous access, no
    /// persistence, `$SYS` topics every second. `name` keeps the scratch
    /// directories of concurrent brokers apart. `None` when mosquitto is
    /// not installed.
    pub fn start(name: &str) -> Option<std::io::Result<Mosquitto>> {
        let binary = Self::binary()?;
        Some((|| {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let dir = std::env::temp_dir().join(format!("mosquitto-{name}-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let mut broker = Mosquitto {
                binary,
                port,
                dir,
                child: None,
            };
            broker.up()?;
            Ok(broker)
        })())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the broker again (after [`Mosquitto::down`]) on the same port,
    /// and waits until it listens.
    pub fn up(&mut self) -> std::io::Result<()> {
        let conf = self.dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nsys_interval 1\nmax_queued_messages 100000\n",
                self.port
            ),
        )?;
        let log = std::fs::File::create(self.dir.join("mosquitto.log"))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + LISTEN_WAIT;
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!("mosquitto did not listen on {addr}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills the broker: its clients lose it at once, as in a crash.
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

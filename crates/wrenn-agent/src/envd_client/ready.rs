//! Waiting for envd after a guest starts or is restored: readiness probes paced by how many
//! guests are waited for at once, and the clock set by the probes themselves.

use super::{check, unix_ms, EnvdClient, EnvdError, Health};
use std::time::{Duration, Instant, SystemTime};
use wrenn_types::envd::SetClock;

/// Timeout of a first readiness probe: short, so a probe sent before the guest's network is up
/// does not delay the next one. Each probe that times out doubles it for the next, up to
/// [`PROBE_TIMEOUT`]: a guest that is up but starved of CPU (many guests resuming at once
/// under TCG) answers late, and probes given up after 50 ms would never see it answer.
const PROBE_FIRST_TIMEOUT: Duration = Duration::from_millis(50);
/// Longest timeout of one readiness probe (connect and answer).
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between readiness probes of one guest while it is the only one waited for; with
/// more guests waited for at once it grows with their number
/// ([`probe_interval`]), so a burst of creates does not spend the host's CPU on the probes
/// of guests that have not run yet.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// Longest pause between readiness probes.
const PROBE_MAX_INTERVAL: Duration = Duration::from_millis(100);

/// Guests being waited for right now ([`EnvdClient::wait_ready`]), in this process.
static WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The pause between readiness probes when `waiting` guests are waited for at once: 5 ms for
/// one or two, growing by 2.5 ms a guest, at most [`PROBE_MAX_INTERVAL`].
fn probe_interval(waiting: usize) -> Duration {
    let n = u32::try_from(waiting.clamp(2, 1000)).unwrap_or(1000);
    (PROBE_INTERVAL * n / 2).min(PROBE_MAX_INTERVAL)
}

/// One guest waited for, counted in [`WAITING`] until dropped.
struct Waiting;

impl Waiting {
    fn start() -> Waiting {
        WAITING.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl EnvdClient {
    /// Polls `/health` every few milliseconds until envd answers or `timeout` passes. Meant
    /// for right after a guest starts or resumes. A probe that times out gives the next one
    /// twice its time; the pause between probes grows with the guests waited for at once.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Health, EnvdError> {
        let url = self.url("/health");
        self.probe_until(timeout, |t| {
            let req = self.probe.get(&url).timeout(t);
            async move {
                let resp = req.send().await.map_err(Probe::from)?;
                let resp = check(resp).await.map_err(Probe::retry)?;
                resp.json::<Health>().await.map_err(Probe::retry)
            }
        })
        .await
    }

    /// Sets the guest's clock to the host's as soon as envd answers, with the probes of
    /// [`EnvdClient::wait_ready`], each one a clock request: a restored guest (whose clock
    /// stood still while it was saved) needs no separate round trip for its clock. An error
    /// answer ends the wait.
    pub async fn set_clock_when_ready(&self, timeout: Duration) -> Result<(), EnvdError> {
        unix_ms(SystemTime::now())?;
        let url = self.url("/clock");
        self.probe_until(timeout, |t| {
            // Taken when each probe is sent, so the clock set is the time it arrives.
            let unix_ms = unix_ms(SystemTime::now()).unwrap_or_default();
            let req = self.probe.post(&url).json(&SetClock { unix_ms }).timeout(t);
            async move {
                let resp = req.send().await.map_err(Probe::from)?;
                check(resp).await.map_err(Probe::Fail)?;
                Ok(())
            }
        })
        .await
    }

    /// Runs `attempt` (given its time limit) until it succeeds, fails for good or `timeout`
    /// passes; see [`EnvdClient::wait_ready`] for the pacing.
    async fn probe_until<T, F, Fut>(
        &self,
        timeout: Duration,
        mut attempt: F,
    ) -> Result<T, EnvdError>
    where
        F: FnMut(Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, Probe>>,
    {
        let _waiting = Waiting::start();
        let began = Instant::now();
        let deadline = began + timeout;
        let mut probe_timeout = PROBE_FIRST_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let last_error =
                match attempt(left.min(probe_timeout).max(Duration::from_millis(1))).await {
                    Ok(v) => return Ok(v),
                    Err(Probe::Fail(e)) => return Err(e),
                    Err(Probe::Retry { timed_out, error }) => {
                        if timed_out {
                            probe_timeout = (probe_timeout * 2).min(PROBE_TIMEOUT);
                        }
                        error
                    }
                };
            let pause = probe_interval(WAITING.load(std::sync::atomic::Ordering::Acquire));
            if Instant::now() + pause >= deadline {
                return Err(EnvdError::NotReady {
                    waited: began.elapsed(),
                    last_error,
                });
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// How one readiness probe failed.
enum Probe {
    /// Not answering yet (or not properly): try again.
    Retry { timed_out: bool, error: String },
    /// Answered with an error: waiting longer will not help.
    Fail(EnvdError),
}

impl Probe {
    fn retry(e: impl std::fmt::Display) -> Probe {
        Probe::Retry {
            timed_out: false,
            error: e.to_string(),
        }
    }
}

impl From<reqwest::Error> for Probe {
    fn from(e: reqwest::Error) -> Probe {
        Probe::Retry {
            timed_out: e.is_timeout(),
            error: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn probes_slow_down_with_the_guests_waited_for() {
        assert_eq!(probe_interval(0), Duration::from_millis(5));
        assert_eq!(probe_interval(1), Duration::from_millis(5));
        assert_eq!(probe_interval(2), Duration::from_millis(5));
        assert_eq!(probe_interval(10), Duration::from_millis(25));
        assert_eq!(probe_interval(30), Duration::from_millis(75));
        assert_eq!(probe_interval(500), PROBE_MAX_INTERVAL);
    }

    /// A fake envd on `listener`: `/clock` answers `status` and records the time it was set to.
    fn fake_envd(
        listener: std::net::TcpListener,
        status: u16,
    ) -> std::sync::Arc<std::sync::Mutex<Vec<u64>>> {
        let set = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = set.clone();
        let app = axum::Router::new().route(
            "/clock",
            axum::routing::post(move |axum::Json(c): axum::Json<SetClock>| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(c.unix_ms);
                    let status = axum::http::StatusCode::from_u16(status).unwrap();
                    let body = r#"{"code":"bad_request","message":"no"}"#;
                    (status, [("content-type", "application/json")], body)
                }
            }),
        );
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        set
    }

    #[tokio::test]
    async fn the_clock_is_set_once_envd_answers() {
        // Nothing listens at first, as while a restored guest's network wakes up.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = EnvdClient::new(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        let started = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            fake_envd(
                std::net::TcpListener::bind(("127.0.0.1", port)).unwrap(),
                200,
            )
        });
        let before = unix_ms(SystemTime::now()).unwrap();
        c.set_clock_when_ready(Duration::from_secs(10))
            .await
            .unwrap();
        let set = started.await.unwrap();
        let set = set.lock().unwrap();
        assert_eq!(set.len(), 1, "set once, when envd answered");
        assert!(
            set[0] >= before + 250,
            "the time the probe was sent, not the wait's start"
        );
    }

    #[tokio::test]
    async fn an_error_answer_ends_the_wait_for_the_clock() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let set = fake_envd(l, 400);
        let c = EnvdClient::new(addr).unwrap();
        let t = Instant::now();
        let e = c
            .set_clock_when_ready(Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            !matches!(e, EnvdError::NotReady { .. }) && e.to_string().contains("400"),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(set.lock().unwrap().len(), 1, "not retried");
    }
}

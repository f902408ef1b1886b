//! The simulated agent's terminals ([`wrenn_agent_api::HostAgent::open_pty`]): no guest, a
//! session that answers `start` with `started`, echoes keystrokes back as output, answers
//! `ping` with `pong`, ends with `exit` 137 on `kill` (or with the code `exit N` typed), and
//! answers a `start` of `/host/error` with a fatal error naming a host path and address (so
//! the control plane's stripping of host details can be tested).

use super::sim::SimAgent;
use super::{AgentApiError, AgentResult};
use tokio::sync::mpsc;
use wrenn_agent_api::{PtyFrame, PtySession};
use wrenn_types::agent::{AgentErrorCode, SandboxStatus};
use wrenn_types::pty::{PtyClientMessage, PtyServerMessage};

impl SimAgent {
    pub(super) fn sim_open_pty(&self, id: &str) -> AgentResult<PtySession> {
        {
            let st = self.lock();
            let sb = st.sandboxes.get(id).ok_or_else(|| {
                AgentApiError::new(AgentErrorCode::NotFound, format!("sandbox {id} not found"))
            })?;
            if sb.info.status != SandboxStatus::Running {
                return Err(AgentApiError::new(
                    AgentErrorCode::Conflict,
                    format!("sandbox {id} is {}", sb.info.status.as_str()),
                ));
            }
        }
        let (to_guest, mut rx) = mpsc::channel::<PtyFrame>(16);
        let (tx, from_guest) = mpsc::channel::<PtyFrame>(16);
        tokio::spawn(async move {
            let ctl = |m: PtyServerMessage| PtyFrame::Control(m.to_text());
            let mut typed = Vec::new();
            while let Some(frame) = rx.recv().await {
                let answer = match frame {
                    PtyFrame::Data(b) => {
                        typed.extend_from_slice(&b);
                        let line = String::from_utf8_lossy(&typed).into_owned();
                        if let Some(code) = line.strip_prefix("exit ").and_then(|r| {
                            r.strip_suffix('\n')
                                .and_then(|n| n.trim().parse::<i32>().ok())
                        }) {
                            let _ = tx.send(PtyFrame::Data(b)).await;
                            let _ = tx
                                .send(ctl(PtyServerMessage::Exit { exit_code: code }))
                                .await;
                            return;
                        }
                        if line.ends_with('\n') {
                            typed.clear();
                        }
                        PtyFrame::Data(b)
                    }
                    PtyFrame::Control(t) => match serde_json::from_str::<PtyClientMessage>(&t) {
                        Ok(PtyClientMessage::Start { cmd, .. }) if cmd == "/host/error" => {
                            let data = "cannot open /var/lib/wrenn/sandboxes/x/pty at 10.11.0.2";
                            let _ = tx.send(ctl(PtyServerMessage::error(data, true))).await;
                            return;
                        }
                        Ok(PtyClientMessage::Start { .. }) => ctl(PtyServerMessage::Started {
                            pid: 100,
                            tag: "sim-pty-1".into(),
                        }),
                        Ok(PtyClientMessage::Kill) => {
                            let _ = tx
                                .send(ctl(PtyServerMessage::Exit { exit_code: 137 }))
                                .await;
                            return;
                        }
                        Ok(PtyClientMessage::Ping) => ctl(PtyServerMessage::Pong),
                        Ok(_) => continue,
                        Err(e) => ctl(PtyServerMessage::error(e.to_string(), false)),
                    },
                };
                if tx.send(answer).await.is_err() {
                    return;
                }
            }
        });
        Ok(PtySession {
            to_guest,
            from_guest,
        })
    }
}

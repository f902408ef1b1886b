//! Idle auto-pause and what a restart of the daemon keeps.

use crate::common::{self, enter, enter_exclusive, rt, PASSWORD};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[test]
fn idle_sandbox_pauses_itself_and_resumes_intact() {
    rt().block_on(async {
        let t = enter().await;
        let s = t.suite;
        let api = s.api(&s.alice);
        // The timeout leaves room for a slow answer on a loaded host: a ping or status call
        // that takes a second or two must not leave the sandbox idle past its timeout.
        let (sb, _) = api.create(json!({"timeout_sec": 5, "memory_mb": 256})).await;
        assert_eq!(sb["timeout_sec"], 5);
        let id = sb["id"].as_str().unwrap().to_string();
        api.sh(
            &id,
            "echo kept > /home/user/idle.txt; \
             setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.2; done' \
             >/dev/null 2>&1 </dev/null & echo $! > /home/user/counter.pid",
        )
        .await;

        // A command that runs longer than the timeout is activity: it is not cut off.
        let v = api
            .exec(
                &id,
                json!({"cmd": "sh", "args": ["-c", "sleep 7; echo finished"], "timeout_sec": 60}),
            )
            .await;
        assert_eq!(v["stdout"], "finished\n", "{v}");
        assert_eq!(api.status(&id).await, "running");

        // Pings keep it running past its timeout.
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            let (st, v) = api.post_empty(&format!("/v1/sandboxes/{id}/ping")).await;
            assert_eq!(st, 204, "pinged sandbox was paused: {v}");
            tokio::time::sleep(Duration::from_millis(400)).await;
        }

        // Left alone, it pauses by itself.
        let idle_from = Instant::now();
        let deadline = idle_from + Duration::from_secs(120);
        loop {
            let status = api.status(&id).await;
            if status == "paused" {
                break;
            }
            assert_eq!(status, "running");
            assert!(Instant::now() < deadline, "idle sandbox never auto-paused");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!(
            "[numbers] auto-pause observed {:?} after the last ping (timeout 5 s, reaper {} ms)",
            idle_from.elapsed(),
            common::REAPER_INTERVAL_MS
        );
        let (st, v) = api
            .post(&format!("/v1/sandboxes/{id}/exec"), json!({"cmd": "true"}))
            .await;
        assert_eq!(st, 409, "{v}");
        let (st, _) = api.post_empty(&format!("/v1/sandboxes/{id}/ping")).await;
        assert_eq!(st, 409);

        api.resume(&id).await;
        let out = api
            .sh(
                &id,
                "cat /home/user/idle.txt; kill -0 $(cat /home/user/counter.pid) && echo alive; \
                 a=$(cat /tmp/count); sleep 1; b=$(cat /tmp/count); \
                 [ \"$b\" -gt \"$a\" ] && echo counting",
            )
            .await;
        assert_eq!(out, "kept\nalive\ncounting\n");
        api.destroy(&id).await;
    });
}

#[test]
fn restart_keeps_accounts_keys_templates_and_sandboxes() {
    rt().block_on(async {
        let x = enter_exclusive().await;
        let s = x.suite;
        // An account of its own: its sandbox list holds exactly what this test made.
        let dave = s.new_account("dave").await;
        let api = s.api(&dave);
        let (r, _) = api.create(json!({"memory_mb": 256})).await;
        let r = r["id"].as_str().unwrap().to_string();
        let (p, _) = api.create(json!({"memory_mb": 256})).await;
        let p = p["id"].as_str().unwrap().to_string();
        api.sh(
            &r,
            "echo r > /home/user/r.txt; \
             setsid sh -c 'while true; do date +%s%N > /tmp/tick.new; mv /tmp/tick.new /tmp/tick; sleep 0.2; done' \
             >/dev/null 2>&1 </dev/null & echo $! > /home/user/ticker.pid",
        )
        .await;
        api.sh(&p, "echo p > /home/user/p.txt").await;
        let (st, v) = api
            .post("/v1/snapshots", json!({"sandbox_id": p, "name": "sx-keep"}))
            .await;
        assert_eq!(st, 201, "{v}");
        let (p2, _) = api.create(json!({"template": "sx-keep"})).await;
        let p2 = p2["id"].as_str().unwrap().to_string();
        api.pause(&p2).await;

        let keys = |token: String| async move {
            let r = s
                .http
                .get(s.url("/v1/api-keys"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let mut list = r.json::<Value>().await.unwrap();
            // `last_used` moves with every call; the rest must stay.
            for k in list.as_array_mut().unwrap() {
                assert!(k["last_used"].is_string(), "key used but not marked: {k}");
                k.as_object_mut().unwrap().remove("last_used");
            }
            list
        };
        let keys_before = keys(dave.token.clone()).await;
        let (_, snaps_before) = api.get("/v1/snapshots?type=snapshot").await;
        let ids = |list: &Value| {
            let mut v: Vec<(String, String)> = list
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["id"].as_str().unwrap().to_string(),
                        s["status"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            v.sort();
            v
        };
        let (_, list) = api.get("/v1/sandboxes").await;
        let mut expected = vec![(r.clone(), "running".to_string()), (p2.clone(), "paused".into())];
        expected.sort();
        assert_eq!(ids(&list), expected);

        for signal in [
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::Signal::SIGKILL,
        ] {
            let (running, paused) = if signal == nix::sys::signal::Signal::SIGTERM {
                (&r, &p2)
            } else {
                (&p2, &r)
            };
            let status = s.stop(signal).await;
            if signal == nix::sys::signal::Signal::SIGTERM {
                assert!(status.success(), "wrenn up exit after SIGTERM: {status}");
            }
            // Down means down: the API refuses connections.
            let probe = s
                .http
                .get(s.url("/openapi.yaml"))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            assert!(probe.is_err(), "API still answers after {signal}");
            let took = s.start_again().await;
            eprintln!("[numbers] wrenn up ready again after {signal}: {took:?}");

            // Accounts: login works, the old session and the key still work.
            let r2 = s
                .http
                .post(s.url("/v1/auth/login"))
                .json(&json!({"email": dave.email, "password": PASSWORD}))
                .send()
                .await
                .unwrap();
            assert_eq!(r2.status(), 200, "login after {signal}");
            assert_eq!(keys(dave.token.clone()).await, keys_before);
            let (_, snaps) = api.get("/v1/snapshots?type=snapshot").await;
            assert_eq!(snaps, snaps_before, "templates after {signal}");
            let (st, list) = api.get("/v1/sandboxes").await;
            assert_eq!(st, 200);
            let mut expected = vec![
                (running.clone(), "running".to_string()),
                (paused.clone(), "paused".into()),
            ];
            expected.sort();
            assert_eq!(ids(&list), expected, "sandboxes after {signal}");

            // The running one answers; the paused one resumes with its state.
            let v = api
                .exec(running, json!({"cmd": "python3", "args": ["-c", "print(6*7)"]}))
                .await;
            assert_eq!(v["stdout"], "42\n", "exec after {signal}");
            api.resume(paused).await;
            let expect_file = if paused == &r { "r\n" } else { "p\n" };
            let file = if paused == &r { "r.txt" } else { "p.txt" };
            assert_eq!(
                api.sh(paused, &format!("cat /home/user/{file}")).await,
                expect_file
            );
            // The ticker of `r` survived both the restart and its pause.
            let out = api
                .sh(
                    &r,
                    "kill -0 $(cat /home/user/ticker.pid) && echo alive; \
                     a=$(cat /tmp/tick); sleep 1; b=$(cat /tmp/tick); \
                     [ \"$b\" -gt \"$a\" ] && echo ticking",
                )
                .await;
            assert_eq!(out, "alive\nticking\n", "after {signal}");
            // Prepare the next round: the other one paused.
            if signal == nix::sys::signal::Signal::SIGTERM {
                api.pause(&r).await;
            }
        }

        // The kept template still makes working sandboxes.
        let (c, _) = api.create(json!({"template": "sx-keep"})).await;
        let c = c["id"].as_str().unwrap().to_string();
        assert_eq!(api.sh(&c, "cat /home/user/p.txt").await, "p\n");
        for id in [&r, &p2, &c] {
            api.destroy(id).await;
        }
        let (st, v) = api.delete("/v1/snapshots/sx-keep").await;
        assert_eq!(st, 204, "{v}");
    });
}

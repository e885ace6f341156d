//! Asks pushgateways directly whether they are alive (`GET /-/healthy`, as Consul's check does,
//! with the same credentials), when Consul's word that several left at once is in doubt.

use crate::config::BasicAuth;
use crate::net;
use dynamic_sharding::members::Member;
use std::time::Duration;
use tokio::task::JoinSet;

/// Time allowed to connect; the whole probe is bounded by the check's timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct Prober {
    http: reqwest::Client,
}

impl Prober {
    pub fn new() -> Result<Prober, reqwest::Error> {
        Ok(Prober {
            http: net::client(CONNECT_TIMEOUT)?,
        })
    }

    /// The members of `members` that answer `200` to `GET /-/healthy` within `timeout`, sorted;
    /// all are asked at once. `auth`: the pushgateways' basic-auth credentials
    /// ([`crate::config::Config::pushgateway_auth`]); behind basic auth, one asked without them
    /// answers `401` and would be judged dead.
    pub async fn alive(
        &self,
        members: &[Member],
        timeout: Duration,
        auth: Option<&BasicAuth>,
    ) -> Vec<Member> {
        let mut tasks = JoinSet::new();
        for m in members {
            let (http, m, auth) = (self.http.clone(), m.clone(), auth.cloned());
            tasks.spawn(async move {
                let mut req = http.get(format!("http://{m}/-/healthy")).timeout(timeout);
                if let Some(a) = &auth {
                    req = req.basic_auth(&a.username, a.password.as_deref());
                }
                let answer = req.send().await;
                answer.is_ok_and(|r| r.status() == 200).then_some(m)
            });
        }
        let mut alive = Vec::new();
        while let Some(done) = tasks.join_next().await {
            if let Ok(Some(m)) = done {
                alive.push(m);
            }
        }
        alive.sort();
        alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback server answering every request with `status` (a thread per server).
    fn serve(status: &'static str) -> Member {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Member::parse(&addr.to_string()).unwrap()
    }

    #[tokio::test]
    async fn only_what_answers_200_is_alive() {
        let ok = serve("200 OK");
        let failing = serve("503 Service Unavailable");
        // Accepts and never answers, as a frozen pushgateway.
        let frozen_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let frozen = Member::parse(&frozen_listener.local_addr().unwrap().to_string()).unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            Member::parse(&l.local_addr().unwrap().to_string()).unwrap()
        };
        let started = std::time::Instant::now();
        let alive = Prober::new()
            .unwrap()
            .alive(
                &[ok.clone(), failing, frozen, closed],
                Duration::from_millis(500),
                None,
            )
            .await;
        assert_eq!(alive, vec![ok]);
        assert!(started.elapsed() < Duration::from_secs(2), "probes run at once");
    }
}

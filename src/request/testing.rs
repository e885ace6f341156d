//! A [`Host`] double for unit tests: it plays the proxy for one listener's filter, records what
//! the filter asked of it, and lets a test set the request, answer calls, move stats the way
//! another worker would, and make any host call fail.

use super::header_map::{encode, RequestHeaders};
use super::host::{Host, HostError, Stat};
use crate::routing::Reply;
use crate::store::{MemoryStore, SharedStore, StoreError};
use log::Level;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// What the filter asked the host to do, in order (reads are not recorded, except the body's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Done {
    SetHeader(String, String),
    RemoveHeader(String),
    ReadBody { start: usize, max: usize },
    DropBody(usize),
    Resume,
    Reply(Reply),
    Call(Sent),
}

/// A call the filter dispatched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

impl Sent {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The shared data, which a test can make unreadable; counts its reads.
#[derive(Default)]
pub struct SharedData {
    pub store: MemoryStore,
    pub broken: bool,
    pub reads: Cell<usize>,
}

impl SharedStore for SharedData {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        self.reads.set(self.reads.get() + 1);
        if self.broken {
            return Err(StoreError::Host(format!(
                "get_shared_data({key}) returned status 2"
            )));
        }
        self.store.get(key)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        if self.broken {
            return Err(StoreError::Host(format!(
                "set_shared_data({key}) returned status 2"
            )));
        }
        self.store.set(key, value, cas)
    }
}

#[derive(Default)]
pub struct FakeHost {
    /// The request headers as the client sent them (the filter's changes are applied).
    headers: RefCell<Vec<(String, String)>>,
    /// What the host holds of the request body.
    pub body: RefCell<Vec<u8>>,
    /// The headers of the call answer being reported.
    response: RefCell<Vec<(String, String)>>,
    /// The body of the call answer being reported.
    pub response_body: RefCell<Vec<u8>>,
    pub shared: RefCell<SharedData>,
    done: RefCell<Vec<Done>>,
    stats: RefCell<[u64; Stat::ALL.len()]>,
    /// Host calls that fail, by name, with the status they give.
    failing: RefCell<HashMap<&'static str, u32>>,
    next_token: Cell<u32>,
    logs: RefCell<Vec<(Level, String)>>,
    /// The wall clock the host reports, in nanoseconds.
    pub now: Cell<u64>,
}

impl FakeHost {
    pub fn set_headers(&self, headers: &[(&str, &str)]) {
        *self.headers.borrow_mut() = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .borrow()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// The answer the next reported call response carries.
    pub fn set_response(&self, headers: &[(&str, &str)]) {
        *self.response.borrow_mut() = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// Makes the host call `call` (a [`Host`] method name) fail with `status` from now on.
    pub fn fail(&self, call: &'static str, status: u32) {
        self.failing.borrow_mut().insert(call, status);
    }

    /// What the filter did, and forget it.
    pub fn take(&self) -> Vec<Done> {
        std::mem::take(&mut *self.done.borrow_mut())
    }

    /// The replies sent, and forget everything done.
    pub fn replies(&self) -> Vec<Reply> {
        self.take()
            .into_iter()
            .filter_map(|d| match d {
                Done::Reply(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// The calls dispatched, and forget everything done.
    pub fn sent(&self) -> Vec<Sent> {
        self.take()
            .into_iter()
            .filter_map(|d| match d {
                Done::Call(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    pub fn stat_value(&self, stat: Stat) -> u64 {
        self.stats.borrow()[stat as usize]
    }

    /// Counts as another worker (or the control listener) would.
    pub fn add_to_stat(&self, stat: Stat, by: u64) {
        self.stats.borrow_mut()[stat as usize] += by;
    }

    pub fn logs(&self) -> Vec<(Level, String)> {
        self.logs.borrow().clone()
    }

    fn check(&self, call: &'static str) -> Result<(), HostError> {
        match self.failing.borrow().get(call) {
            Some(&status) => Err(HostError { call, status }),
            None => Ok(()),
        }
    }

    fn record_done(&self, done: Done) {
        self.done.borrow_mut().push(done);
    }
}

impl Host for FakeHost {
    fn request_headers(&self) -> Result<RequestHeaders, HostError> {
        self.check("request_headers")?;
        let headers = self.headers.borrow();
        let pairs = headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        Ok(RequestHeaders::from_encoded(encode(pairs)))
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        self.check("set_request_header")?;
        self.record_done(Done::SetHeader(name.to_owned(), value.to_owned()));
        let mut headers = self.headers.borrow_mut();
        headers.retain(|(n, _)| n != name);
        headers.push((name.to_owned(), value.to_owned()));
        Ok(())
    }

    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        self.check("remove_request_header")?;
        self.record_done(Done::RemoveHeader(name.to_owned()));
        self.headers.borrow_mut().retain(|(n, _)| n != name);
        Ok(())
    }

    fn request_body(&self, start: usize, max: usize) -> Result<Vec<u8>, HostError> {
        self.check("request_body")?;
        self.record_done(Done::ReadBody { start, max });
        let body = self.body.borrow();
        let start = start.min(body.len());
        let end = start.saturating_add(max).min(body.len());
        Ok(body[start..end].to_vec())
    }

    fn drop_request_body(&self, size: usize) -> Result<(), HostError> {
        self.check("drop_request_body")?;
        self.record_done(Done::DropBody(size));
        let mut body = self.body.borrow_mut();
        let size = size.min(body.len());
        body.drain(..size);
        Ok(())
    }

    fn resume_request(&self) -> Result<(), HostError> {
        self.check("resume_request")?;
        self.record_done(Done::Resume);
        Ok(())
    }

    fn send_reply(&self, reply: &Reply) -> Result<(), HostError> {
        self.check("send_reply")?;
        self.record_done(Done::Reply(reply.clone()));
        Ok(())
    }

    fn dispatch_http_call_with_body(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: &[u8],
        timeout: Duration,
    ) -> Result<u32, HostError> {
        self.check("dispatch_http_call")?;
        let token = self.next_token.get() + 1;
        self.next_token.set(token);
        self.record_done(Done::Call(Sent {
            token,
            cluster: cluster.to_owned(),
            headers: headers
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
            body: body.to_vec(),
            timeout,
        }));
        Ok(token)
    }

    fn http_call_response_header(&self, name: &str) -> Result<Option<String>, HostError> {
        self.check("http_call_response_header")?;
        Ok(self
            .response
            .borrow()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone()))
    }

    fn http_call_response_body(&self, max: usize) -> Result<Vec<u8>, HostError> {
        self.check("http_call_response_body")?;
        let body = self.response_body.borrow();
        Ok(body[..max.min(body.len())].to_vec())
    }

    fn stat(&self, stat: Stat) -> Result<u64, HostError> {
        self.check("stat")?;
        Ok(self.stat_value(stat))
    }

    fn count(&self, stat: Stat) {
        if self.check("count").is_ok() {
            self.add_to_stat(stat, 1);
        }
    }

    fn record(&self, stat: Stat, value: u64) {
        if self.check("record").is_ok() {
            self.stats.borrow_mut()[stat as usize] = value;
        }
    }

    fn now_nanos(&self) -> u64 {
        self.now.get()
    }

    fn log(&self, level: Level, message: fmt::Arguments<'_>) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }

    fn with_shared_data<R>(&self, f: impl FnOnce(&mut dyn SharedStore) -> R) -> R {
        f(&mut *self.shared.borrow_mut())
    }
}

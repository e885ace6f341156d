//! The calls one request sent and waits for, and what the request does once all of them answered.
//!
//! A request may hold its own answer (or its way upstream) until other pushgateways answered a
//! call of its own; [`InFlight`] keeps the calls by token and what each was for, and releases what
//! waited for them when the last one answered, failed or timed out.

use crate::members::Member;
use crate::routing::{Replica, Reply};

/// What a call was sent for, which says what its answer means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// The same `DELETE` as the client's, to a pushgateway that may hold a copy of the group.
    DeleteCopy(Member),
    /// The client's write, to the standby of the slot it goes to.
    Replicate(Replica),
}

impl Purpose {
    /// The pushgateway the call goes to: for a `DELETE`'s calls, one it may not have reached
    /// while the call is in flight.
    pub fn target(&self) -> &Member {
        match self {
            Purpose::DeleteCopy(member) => member,
            Purpose::Replicate(replica) => &replica.standby,
        }
    }
}

/// What a request does once nothing it waits for is in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Then {
    /// Send this reply.
    Reply(Reply),
    /// Go on upstream.
    Resume,
}

/// Calls in flight, and what waits for them.
#[derive(Debug, Default)]
pub struct InFlight {
    calls: Vec<(u32, Purpose)>,
    then: Option<Then>,
}

impl InFlight {
    /// A call the host accepted, under the token it returned.
    pub fn sent(&mut self, token: u32, purpose: Purpose) {
        self.calls.push((token, purpose));
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// What each call still in flight was for.
    pub fn pending(&self) -> impl Iterator<Item = &Purpose> {
        self.calls.iter().map(|(_, p)| p)
    }

    /// `then`, back when nothing is in flight (carry it out now); otherwise kept until the last
    /// call answered (see [`InFlight::released`]).
    pub fn after(&mut self, then: Then) -> Option<Then> {
        if self.calls.is_empty() {
            Some(then)
        } else {
            self.then = Some(then);
            None
        }
    }

    /// The call `token` answered (or failed): what it was for, and no longer in flight. `None`
    /// for a token this request never sent or already saw answered.
    pub fn answered(&mut self, token: u32) -> Option<Purpose> {
        let i = self.calls.iter().position(|(t, _)| *t == token)?;
        Some(self.calls.swap_remove(i).1)
    }

    /// What waited for the calls, once none is in flight any more (carry it out now).
    pub fn released(&mut self) -> Option<Then> {
        if self.calls.is_empty() {
            self.then.take()
        } else {
            None
        }
    }
}

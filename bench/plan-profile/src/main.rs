//! Runs the filter's redirect decision for the pushes bench/run.sh sends (`PUT` to
//! `/metrics/job/bench_<n>`, 10,000 groups, 3 members), so callgrind can count it by function.
//!
//! `plan-profile [pushes] [members]`; the decisions are in `decide`, which callgrind is told to
//! count alone (setup excluded).

use dynamic_sharding::config::Mode;
use dynamic_sharding::members::MemberList;
use dynamic_sharding::ring::Ring;
use dynamic_sharding::routing;
use std::process::ExitCode;

/// The member list's vnodes in the shipped config.
const VNODES: u32 = 500;

#[inline(never)]
fn decide(pushes: usize, paths: &[String], ring: &Ring, list: &MemberList) -> usize {
    let mut redirects = 0;
    for i in 0..pushes {
        let plan = routing::plan(Mode::Redirect, "PUT", &paths[i % paths.len()], ring, list);
        if matches!(
            std::hint::black_box(&plan).decision,
            routing::Decision::Reply { .. }
        ) {
            redirects += 1;
        }
    }
    redirects
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| args.get(i).map_or(Ok(default), |a| a.parse::<usize>());
    let (Ok(pushes), Ok(members)) = (number(0, 20_000), number(1, 3)) else {
        eprintln!("usage: plan-profile [pushes (a number, 20000)] [members (a number, 3)]");
        return ExitCode::from(2);
    };
    let members: Vec<String> = (0..members.max(1))
        .map(|i| format!("127.0.0.1:{}", 20000 + i))
        .collect();
    let list = match MemberList::new(1, &members) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("plan-profile: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ring = Ring::new(&list.members, VNODES);
    let paths: Vec<String> = (0..10_000).map(|n| format!("/metrics/job/bench_{n}")).collect();
    let redirects = decide(pushes, &paths, &ring, &list);
    println!("{redirects} redirects");
    ExitCode::SUCCESS
}

//! Certificates issued per second by one CA (`cargo bench -p mcpgate-pki --bench issue`):
//! what `login`, bot renewal and agent renewal each sign, on one core. Prints a line for
//! `scripts/bench`'s report.

use std::time::{Duration, Instant, SystemTime};

use mcpgate_pki::{CaKind, CertAuthority};
use mcpgate_types::{Claims, IdentityKind};

fn main() {
    let now = SystemTime::now();
    let ca = CertAuthority::generate("bench.local", CaKind::User, now).expect("a CA");
    // The client's key is made on the client: one key is signed again and again.
    let key = rcgen::KeyPair::generate().expect("a key");
    let public = key.public_key_pem();
    let claims = Claims {
        name: "alice".into(),
        kind: IdentityKind::User,
        roles: vec!["dev".into(), "auditor".into()],
        traits: Default::default(),
        generation: 0,
        cluster: "bench.local".into(),
        oauth_client: None,
    };
    let ttl = Duration::from_secs(12 * 3600);
    for _ in 0..200 {
        ca.issue(&public, &claims, &[], now, ttl).expect("issue");
    }
    let started = Instant::now();
    let mut issued = 0u32;
    while started.elapsed() < Duration::from_secs(2) {
        ca.issue(&public, &claims, &[], now, ttl).expect("issue");
        issued += 1;
    }
    let rate = f64::from(issued) / started.elapsed().as_secs_f64();
    println!("certificates issued per second (one core, user CA, ECDSA P-256): {rate:.0}");
}

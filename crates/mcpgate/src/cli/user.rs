//! `signup`, `login`, `logout`, `status`: a person's credentials.

use anyhow::{Context, anyhow, bail};
use std::io::{BufRead, IsTerminal};
use std::time::SystemTime;

use mcpgate_auth::wire::{CertResponse, LoginRequest, Ping, SignupRequest, SignupResponse};
use mcpgate_pki::Identity;
use mcpgate_types::clock::unix_secs;

use super::{Format, print_data, rfc3339};
use crate::client::Api;
use crate::profile::{self, Profile};

#[derive(Debug, clap::Args)]
pub struct SignupArgs {
    /// The proxy address: HOST[:PORT] or https://HOST[:PORT] (port 3080 if none).
    #[arg(long, env = "MCPGATE_PROXY", value_parser = crate::client::proxy_addr)]
    proxy: String,
    /// The invite token from `mcpgate admin users add`.
    #[arg(long)]
    invite: String,
    /// The cluster's CA pin (printed by `mcpgate start`), checked before anything is sent.
    #[arg(long)]
    ca_pin: Option<String>,
    /// Read the password from the first line of standard input (and, with a second factor,
    /// the confirming code from the second).
    #[arg(long)]
    password_stdin: bool,
    /// Enrol this TOTP secret (base32) instead of a new one, e.g. from a password manager.
    #[arg(long)]
    otp_secret: Option<String>,
    /// A code the authenticator shows now, confirming the enrolment.
    #[arg(long)]
    otp: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The proxy address: HOST[:PORT] or https://HOST[:PORT] (default: $MCPGATE_PROXY, then
    /// the last one logged in to).
    #[arg(long, env = "MCPGATE_PROXY", value_parser = crate::client::proxy_addr)]
    proxy: Option<String>,
    /// The user name (default: the last one logged in as).
    #[arg(long)]
    user: Option<String>,
    /// The cluster's CA pin, checked before the password is sent.
    #[arg(long)]
    ca_pin: Option<String>,
    /// Ask for a shorter certificate than the roles allow (e.g. 1h).
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<std::time::Duration>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
    /// The current code of your authenticator app.
    #[arg(long)]
    otp: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    mcpgate_types::duration::parse(s).map_err(|e| e.to_string())
}

fn read_password(from_stdin: bool, prompt: &str) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        if !std::io::stdin().is_terminal() {
            bail!("no terminal to ask for a password: pass --password-stdin and pipe it in");
        }
        rpassword::prompt_password(prompt).context("cannot read the password")?
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

/// The API client for first contact: the pin if given, else a stored profile for this proxy.
fn first_contact(proxy: &str, pin: Option<&str>) -> anyhow::Result<(Api, String)> {
    if let Some(pin) = pin {
        return Ok((Api::pinned(proxy, pin)?, pin.to_string()));
    }
    if let Some(p) = profile::load_remembered(&profile::home()?)?.filter(|p| p.proxy == proxy) {
        return Ok((Api::pinned(proxy, &p.ca_pin)?, p.ca_pin));
    }
    bail!(
        "pass --ca-pin (printed by `mcpgate start`) so mcpgate can tell the cluster from an impostor"
    )
}

pub async fn signup(args: SignupArgs) -> anyhow::Result<()> {
    let (api, pin) = first_contact(&args.proxy, args.ca_pin.as_deref())?;
    // Check the pin before asking for or sending a password.
    let ping: Ping = api.get("/v1/ping").await?;
    // With --password-stdin: the password on the first line, the code on the second.
    let mut piped = args.password_stdin.then(|| std::io::stdin().lock().lines());
    let password = match piped.as_mut() {
        Some(lines) => {
            let line = lines
                .next()
                .transpose()
                .context("cannot read the password from standard input")?
                .unwrap_or_default();
            if line.is_empty() {
                bail!("the password is empty");
            }
            line
        }
        None => {
            let password = read_password(false, "New password: ")?;
            let again = read_password(false, "Repeat the password: ")?;
            if again != password {
                bail!("the passwords do not match");
            }
            password
        }
    };
    let min = mcpgate_auth::login::MIN_PASSWORD;
    if password.chars().count() < min {
        bail!("the password must be at least {min} characters");
    }
    // A second factor is enrolled, shown, and confirmed with a code before the account is
    // active.
    let totp = if ping.second_factor == "otp" {
        let secret = match &args.otp_secret {
            Some(s) => s.trim().to_ascii_uppercase(),
            None => mcpgate_auth::login::new_otp_secret()?,
        };
        if args.otp_secret.is_none() {
            show_enrolment(&ping.cluster, &secret);
        }
        let code = match (&args.otp, piped.as_mut()) {
            (Some(code), _) => code.clone(),
            (None, Some(lines)) => lines
                .next()
                .transpose()
                .context("cannot read the code from standard input")?
                .filter(|c| !c.trim().is_empty())
                .ok_or_else(|| match &args.otp_secret {
                    Some(_) => anyhow!("confirm the second factor: pass --otp CODE, or put the code on the second line of standard input"),
                    // The invite is still good: the secret just shown can be used again.
                    None => anyhow!("confirm the second factor: run signup again with --otp-secret {secret} --otp CODE (a code from an authenticator set up with that secret)"),
                })?,
            (None, None) => {
                print!("Code from your authenticator: ");
                std::io::Write::flush(&mut std::io::stdout())?;
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("cannot read the code")?;
                line
            }
        };
        Some((secret, code.trim().to_string()))
    } else {
        None
    };
    let resp: SignupResponse = api
        .post(
            "/v1/signup",
            &SignupRequest {
                invite: args.invite.clone(),
                password,
                totp_secret: totp.as_ref().map(|(s, _)| s.clone()),
                otp: totp.as_ref().map(|(_, c)| c.clone()),
            },
        )
        .await?;
    println!(
        "Password set for {} on cluster {}.",
        resp.user, ping.cluster
    );
    if let Some(uri) = &resp.otp_uri {
        println!(
            "Second factor confirmed; log in with the codes your authenticator shows ({uri})."
        );
    }
    println!(
        "Next: mcpgate login --proxy {} --user {} --ca-pin {pin}",
        args.proxy, resp.user
    );
    Ok(())
}

/// Shows a new TOTP secret: as a QR code to scan, and as text to type.
fn show_enrolment(cluster: &str, secret: &str) {
    let uri = mcpgate_auth::login::otp_uri_for(cluster, "mcpgate", secret);
    println!(
        "Add this account to your authenticator app (TOTP): scan the code, or type the secret."
    );
    if let Ok(qr) = qrcode::QrCode::new(uri.as_bytes()) {
        let art = qr
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build();
        println!("{art}");
    }
    println!("  secret: {secret}");
}

pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let home = profile::home()?;
    let previous = profile::load_remembered(&home)?;
    let proxy = args
        .proxy
        .or_else(|| previous.as_ref().map(|p| p.proxy.clone()))
        .ok_or_else(|| anyhow!("pass --proxy HOST:PORT"))?;
    let user = args
        .user
        .or_else(|| {
            previous
                .as_ref()
                .filter(|p| p.proxy == proxy)
                .map(|p| p.user.clone())
        })
        .filter(|u| !u.is_empty())
        .ok_or_else(|| anyhow!("pass --user NAME"))?;
    let (api, pin) = first_contact(&proxy, args.ca_pin.as_deref())?;
    let ping: Ping = api.get("/v1/ping").await?;
    let password = read_password(args.password_stdin, &format!("Password for {user}: "))?;
    let otp = match args.otp {
        Some(code) => Some(code),
        None if ping.second_factor == "otp" && args.password_stdin => {
            // As with signup: the code on the second line of standard input.
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the code from standard input")?;
            let code = line.trim().to_string();
            if code.is_empty() {
                bail!(
                    "cluster {} requires a second factor: pass --otp CODE, or put the code on the second line of standard input",
                    ping.cluster
                );
            }
            Some(code)
        }
        None if ping.second_factor == "otp" => {
            if !std::io::stdin().is_terminal() {
                bail!(
                    "cluster {} requires a second factor: pass --otp CODE",
                    ping.cluster
                );
            }
            eprint!("Code from your authenticator app: ");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            Some(line.trim().to_string())
        }
        None => None,
    };
    let key = rcgen::KeyPair::generate()?;
    let resp: CertResponse = api
        .post(
            "/v1/login",
            &LoginRequest {
                user: user.clone(),
                password,
                otp,
                public_key: key.public_key_pem(),
                ttl_secs: args.ttl.map(|d| d.as_secs()),
            },
        )
        .await?;
    let identity = Identity::new(&key.serialize_pem(), &resp.cert, &resp.cas)
        .context("the proxy issued an unusable certificate")?;
    if !resp.cas.iter().any(|ca| {
        mcpgate_pki::identity::certs_from_pem(ca)
            .ok()
            .and_then(|c| c.first().and_then(|c| mcpgate_pki::pin_of_cert(c).ok()))
            .is_some_and(|p| p == pin)
    }) {
        bail!("the proxy's CA certificates do not match the pin; refusing to store them");
    }
    let profile = Profile {
        proxy: proxy.clone(),
        cluster: ping.cluster.clone(),
        ca_pin: pin,
        user: user.clone(),
    };
    profile::save(&home, &profile, &identity)?;
    println!(
        "Logged in to {} as {user} (roles: {}) until {}.",
        ping.cluster,
        resp.roles.join(", "),
        rfc3339(resp.expires)
    );
    println!("Credentials: {}", home.join("identity").display());
    // A --ttl longer than the roles allow is cut: say so rather than surprise later.
    if let Some(asked) = args.ttl {
        let granted = resp
            .expires
            .saturating_sub(mcpgate_types::clock::unix_secs(std::time::SystemTime::now()));
        if asked.as_secs() as i64 > granted.saturating_add(60) {
            println!(
                "Note: you asked for {}; your roles allow at most {} (max_session_ttl).",
                mcpgate_types::duration::format(asked),
                mcpgate_types::duration::format(std::time::Duration::from_secs(
                    granted.max(0) as u64
                ))
            );
        }
    }
    Ok(())
}

pub fn logout() -> anyhow::Result<()> {
    let home = profile::home()?;
    let profile = profile::load_profile(&home).ok().flatten();
    if profile::remove(&home)? {
        match profile {
            Some(p) => println!("Logged out of {} ({}).", p.cluster, p.proxy),
            None => println!("Logged out."),
        }
    } else {
        println!("Not logged in.");
    }
    Ok(())
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let home = profile::home()?;
    let Some(stored) = profile::load(&home)? else {
        bail!("not logged in: run `mcpgate login --proxy HOST:PORT --user NAME --ca-pin PIN`");
    };
    let claims = &stored.identity.info.claims;
    let expires = unix_secs(stored.identity.info.not_after);
    let valid = stored.identity.info.valid_at(SystemTime::now());
    // Other clusters this person logged in to (their certificates kept per cluster).
    let now = SystemTime::now();
    let others: Vec<serde_json::Value> = profile::all(&home)
        .into_iter()
        .filter(|o| o.profile.cluster != stored.profile.cluster)
        .map(|o| {
            serde_json::json!({
                "proxy": o.profile.proxy,
                "cluster": o.profile.cluster,
                "user": o.identity.info.claims.name,
                "expires": rfc3339(unix_secs(o.identity.info.not_after)),
                "valid": o.identity.info.valid_at(now),
            })
        })
        .collect();
    if args.format != Format::Text {
        print_data(
            &serde_json::json!({
                "proxy": stored.profile.proxy,
                "cluster": stored.profile.cluster,
                "user": claims.name,
                "kind": claims.kind.as_str(),
                "roles": claims.roles,
                "traits": claims.traits,
                "expires": rfc3339(expires),
                "valid": valid,
                "other_clusters": others,
            }),
            args.format,
        )?;
        if !valid {
            bail!("your certificate has expired; run `mcpgate login` again");
        }
        return Ok(());
    }
    println!("Proxy:    {}", stored.profile.proxy);
    println!("Cluster:  {}", stored.profile.cluster);
    println!("User:     {}", claims.name);
    println!("Roles:    {}", claims.roles.join(", "));
    for o in &others {
        println!(
            "Also:     cluster {} at {} as {} ({} {})",
            o["cluster"].as_str().unwrap_or_default(),
            o["proxy"].as_str().unwrap_or_default(),
            o["user"].as_str().unwrap_or_default(),
            if o["valid"] == true {
                "valid until"
            } else {
                "EXPIRED at"
            },
            o["expires"].as_str().unwrap_or_default()
        );
    }
    if valid {
        let left = stored
            .identity
            .info
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        println!(
            "Valid until {} (in {})",
            rfc3339(expires),
            mcpgate_types::duration::format(left)
        );
    } else {
        println!("EXPIRED at {}: run `mcpgate login` again", rfc3339(expires));
        bail!("your certificate has expired; run `mcpgate login` again");
    }
    Ok(())
}

//! `mcpgate admin apps pins|approve`: the tool definitions pinned for an app, those held
//! since they changed (rug pulls), and approving them.

use clap::Subcommand;

use mcpgate_auth::wire::ApproveRequest;
use mcpgate_types::pins::{self, Pin};

use super::{Format, print_data};
use crate::client::Api;

#[derive(Debug, Subcommand)]
pub enum AppsCommand {
    /// The tool definitions pinned for an app, and those held: changed since approved, new
    /// on a `pin: strict` app, or hiding characters. Held ones show what changed.
    Pins {
        app: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Approve what is held on an app (every tool, or one): it is offered and callable again.
    Approve {
        app: String,
        #[arg(long)]
        tool: Option<String>,
        /// The held definition you looked at (its hash as `pins` shows it): approve it only
        /// if the server has not put another in its place since.
        #[arg(long, requires = "tool")]
        hash: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

pub async fn run(api: &Api, command: AppsCommand) -> anyhow::Result<()> {
    match command {
        AppsCommand::Pins { app, format } => {
            let mut list: Vec<Pin> = api
                .get(&format!("/v1/admin/pins/{}", super::admin::urlencode(&app)))
                .await?;
            list.sort_by(|a, b| a.tool.cmp(&b.tool));
            if format != Format::Text {
                return print_data(&list, format);
            }
            if list.is_empty() {
                println!("No tool of app {app} has been seen yet.");
                return Ok(());
            }
            let short = |h: &str| h.chars().take(19).collect::<String>();
            println!("{:<32} {:<16} {:<20} HELD", "TOOL", "STATE", "APPROVED");
            for p in &list {
                println!(
                    "{:<32} {:<16} {:<20} {}",
                    pins::shown_name(&p.tool),
                    p.state(),
                    p.approved.as_ref().map_or("-".into(), |a| short(&a.hash)),
                    p.held.as_ref().map_or("-".into(), |h| short(&h.hash)),
                );
            }
            let empty = serde_json::Value::Object(Default::default());
            for p in list.iter().filter(|p| p.held.is_some()) {
                let Some(held) = &p.held else { continue };
                let old = p.approved.as_ref().map_or(&empty, |a| &a.definition);
                println!(
                    "\n{} (seen by {}):",
                    pins::shown_name(&p.tool),
                    pins::escaped(&held.by)
                );
                for line in pins::diff(old, &held.definition) {
                    println!("  {line}");
                }
                for hidden in pins::hidden_in(&held.definition) {
                    println!("  hidden characters in {hidden}");
                }
            }
            if list.iter().any(|p| p.held.is_some()) {
                println!("\nApprove with: mcpgate admin apps approve {app} [--tool TOOL]");
            }
            Ok(())
        }
        AppsCommand::Approve {
            app,
            tool,
            hash,
            format,
        } => {
            let approved: Vec<Pin> = api
                .post(
                    &format!("/v1/admin/pins/{}/approve", super::admin::urlencode(&app)),
                    &ApproveRequest { tool, hash },
                )
                .await?;
            if format != Format::Text {
                return print_data(&approved, format);
            }
            if approved.is_empty() {
                println!("Nothing of app {app} was held.");
            }
            for p in &approved {
                println!(
                    "Approved tool {} of app {app} ({}).",
                    pins::shown_name(&p.tool),
                    p.approved.as_ref().map_or("", |a| a.hash.as_str())
                );
            }
            Ok(())
        }
    }
}

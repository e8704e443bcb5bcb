//! `rkubectl config view|use-context|get-contexts|current-context`.

use clap::Subcommand;

use super::config::{self, Kubeconfig};
use super::printer;

/// The `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigVerb {
    /// Display the merged kubeconfig.
    View {
        /// Print certificates and tokens instead of redacting them.
        #[arg(long)]
        raw: bool,
    },
    /// Set the current-context in a kubeconfig file.
    UseContext {
        /// The context to switch to.
        name: String,
    },
    /// Describe one or many contexts.
    GetContexts,
    /// Display the current-context.
    CurrentContext,
}

/// Runs a `config` subcommand.
///
/// # Errors
/// When the kubeconfig cannot be written or has no such context.
pub fn run(kubeconfig: &Kubeconfig, verb: ConfigVerb) -> anyhow::Result<()> {
    match verb {
        ConfigVerb::View { raw } => {
            print!(
                "{}",
                serde_yaml::to_string(&config::view(kubeconfig, raw))
                    .expect("a JSON value always serializes")
            );
        }
        ConfigVerb::UseContext { name } => {
            kubeconfig
                .use_context(&name)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("Switched to context \"{name}\".");
        }
        ConfigVerb::GetContexts => {
            print!("{}", printer::columns(&config::contexts_table(kubeconfig)))
        }
        ConfigVerb::CurrentContext => match kubeconfig.current_context() {
            Some(c) => println!("{c}"),
            None => anyhow::bail!("current-context is not set"),
        },
    }
    Ok(())
}

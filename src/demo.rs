//! `syn2mas demo`: the whole job end to end on the bundled fixture, with nothing to prepare.
//!
//! The fixture's SQL and configs are compiled into the binary, so a fresh machine with a local
//! PostgreSQL needs only `cargo run --release -- demo` to see check, migrate and the summary.

use std::path::PathBuf;

use anyhow::Context;

use crate::config;

const SYNAPSE_SQL: [&str; 2] = [
    include_str!("../fixtures/synapse/schema.sql"),
    include_str!("../fixtures/synapse/data.sql"),
];
const MAS_SQL: [&str; 2] = [
    include_str!("../fixtures/mas/schema.sql"),
    include_str!("../fixtures/mas/providers.sql"),
];
const HOMESERVER_YAML: &str = include_str!("../fixtures/synapse/homeserver.yaml");
const MAS_YAML: &str = include_str!("../fixtures/mas/config.yaml");

/// The config files of the demo, written to a fresh folder.
pub struct DemoConfigs {
    pub homeserver: PathBuf,
    pub mas: PathBuf,
}

/// (Re)creates the two demo databases named in the bundled configs and loads the fixture.
/// Returns the config files to run syn2mas with.
pub async fn prepare() -> anyhow::Result<DemoConfigs> {
    let dir = std::env::temp_dir().join(format!("syn2mas-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let configs = DemoConfigs {
        homeserver: dir.join("homeserver.yaml"),
        mas: dir.join("config.yaml"),
    };
    std::fs::write(&configs.homeserver, HOMESERVER_YAML)?;
    std::fs::write(&configs.mas, MAS_YAML)?;
    let synapse = config::load_synapse(std::slice::from_ref(&configs.homeserver))?;
    let mas = config::load_mas(std::slice::from_ref(&configs.mas))?;
    let synapse_db = synapse
        .database
        .context("the demo homeserver.yaml has a database section")?;
    recreate(&synapse_db, &SYNAPSE_SQL).await?;
    recreate(&mas.database, &MAS_SQL).await?;
    Ok(configs)
}

/// Drops and creates the database `target` names (connecting to `postgres` on the same server
/// to do so), then runs `sql` in it.
async fn recreate(target: &crate::db::ConnectOptions, sql: &[&str]) -> anyhow::Result<()> {
    let (_, _, dbname, _) = target.effective();
    let mut admin = target.clone();
    admin.dbname = Some("postgres".to_owned());
    let client = admin.connect("demo").await?;
    let quoted = format!("\"{}\"", dbname.replace('"', "\"\""));
    for sql in [
        format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"),
        format!("CREATE DATABASE {quoted}"),
    ] {
        client
            .batch_execute(&sql)
            .await
            .with_context(|| format!("creating the demo database {dbname}"))?;
    }
    let db = target.connect("demo").await?;
    for s in sql {
        db.batch_execute(s)
            .await
            .with_context(|| format!("loading the demo fixture into {dbname}"))?;
    }
    eprintln!("Created demo database {dbname} ({})", target.describe());
    Ok(())
}

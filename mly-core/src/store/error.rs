//! Errors of the storage layer, and how database errors are told to a user: the server's
//! message with its SQLSTATE, never the password.

/// Errors of the storage layer; none of them ever carries the database password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL could not be parsed (the URL itself is not repeated: it may hold a password).
    #[error("invalid database URL: {reason}")]
    BadUrl { reason: String },
    #[error("invalid database schema name {0:?}: use lowercase letters, digits and _")]
    BadSchema(String),
    #[error("cannot connect to PostgreSQL at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error(
        "PostGIS is not available in this database ({detail}): install it on the database host with \
         `apt-get install postgresql-{major}-postgis-3`, or have a superuser run `CREATE EXTENSION postgis` \
         in this database"
    )]
    NoPostgis { major: u32, detail: String },
    #[error("while migrating schema {schema}: {}", describe_migrate(source))]
    Migrate {
        schema: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error(
        "schema {schema:?} differs from what its migrations create: {}; restore what was changed (e.g. from a backup) or harvest into a new schema (database.schema)",
        summarize(problems)
    )]
    Drift { schema: String, problems: Vec<String> },
    #[error("database error while {context}: {}", describe(source))]
    Query {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("while encoding {what}: {reason}")]
    Encode { what: String, reason: String },
}

pub fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => {
            let mut s = db.message().to_string();
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                if let Some(d) = pg.detail() {
                    s = format!("{s} ({d})");
                }
                if let Some(h) = pg.hint() {
                    s = format!("{s}; hint: {h}");
                }
            }
            match db.code() {
                Some(code) => format!("{s} [SQLSTATE {code}]"),
                None => s,
            }
        }
        other => other.to_string(),
    }
}

/// The first few drift problems, and how many more there are.
fn summarize(problems: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = problems.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
    if problems.len() > SHOWN {
        s += &format!("; and {} more", problems.len() - SHOWN);
    }
    s
}

/// A migration error with the database part described by [`describe`].
pub fn describe_migrate(e: &sqlx::migrate::MigrateError) -> String {
    use sqlx::migrate::MigrateError;
    match e {
        MigrateError::Execute(inner) => format!("while executing migrations: {}", describe(inner)),
        MigrateError::ExecuteMigration(inner, v) => {
            format!("while executing migration {v}: {}", describe(inner))
        }
        other => other.to_string(),
    }
}

/// Builds the [`StoreError::NoPostgis`] error for a server of the given major version.
pub fn no_postgis(major: u32, detail: &str) -> StoreError {
    StoreError::NoPostgis { major, detail: detail.to_string() }
}

/// Wraps a sqlx error with what we were doing.
pub fn query_err(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Query { context, source }
}

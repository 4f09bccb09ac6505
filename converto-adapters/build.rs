//! `sqlx::migrate!` embeds the migration files at compile time, but stable Rust cannot tell
//! cargo that a macro read a directory: without this, a new migration is missed until
//! something else rebuilds the crate.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

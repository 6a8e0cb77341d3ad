//! The demo's sample database: `demo_db create PATH` makes a SQLite database
//! of customers; `demo_db show PATH` prints what a restored copy holds.

use rusqlite::Connection;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(cmd), Some(path)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: demo_db create|show PATH");
        std::process::exit(2);
    };
    let c = Connection::open(path)?;
    match cmd.as_str() {
        "create" => {
            c.execute_batch(
                "PRAGMA journal_mode=WAL;
                 CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT NOT NULL, balance REAL);",
            )?;
            let tx = c.unchecked_transaction()?;
            for i in 1..=1000 {
                tx.execute(
                    "INSERT INTO customers (email, balance) VALUES (?1, ?2)",
                    (format!("customer{i}@example.com"), f64::from(i) * 1.25),
                )?;
            }
            tx.commit()?;
            println!("{path}: 1000 customers");
        }
        "show" => {
            let n: i64 = c.query_row("SELECT count(*) FROM customers", [], |r| r.get(0))?;
            println!("{path}: {n} customers; the first three:");
            let mut st =
                c.prepare("SELECT id, email, balance FROM customers ORDER BY id LIMIT 3")?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, f64>(2)?,
                ))
            })?;
            for row in rows {
                let (id, email, balance) = row?;
                println!("  {id:>4}  {email:<28} {balance:>8.2}");
            }
        }
        _ => {
            eprintln!("usage: demo_db create|show PATH");
            std::process::exit(2);
        }
    }
    Ok(())
}

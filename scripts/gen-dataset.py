#!/usr/bin/env python3
"""Writes SQL for a deterministic benchmark database to stdout.

Realistic rows — ints, decimals, timestamps, e-mail addresses, JSON and free
text — from a fixed seed, so every run and every machine loads the same data.
The SQL is about --size-mb megabytes, and mysqldump's output of the loaded
database is close to that size.

    python3 scripts/gen-dataset.py --size-mb 700 | mariadb bench
"""

import argparse
import json
import random
import sys

WORDS = (
    "backup restore nightly server database archive stream chunk cipher key "
    "order invoice customer shipment payment refund ticket warehouse product "
    "blue green quick lazy fox river mountain coffee window garden letter "
    "delivered pending cancelled returned priority standard express note"
).split()
DOMAINS = ["example.com", "example.org", "mail.example.net", "corp.example"]
STATUSES = ["pending", "paid", "shipped", "delivered", "cancelled", "refunded"]
ROWS_PER_INSERT = 500


def sql_str(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def text(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def timestamp(rng):
    return "'%04d-%02d-%02d %02d:%02d:%02d'" % (
        rng.randint(2015, 2026), rng.randint(1, 12), rng.randint(1, 28),
        rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59))


def customer(rng, i):
    first = rng.choice(WORDS).capitalize()
    last = rng.choice(WORDS).capitalize()
    email = "%s.%s%d@%s" % (first.lower(), last.lower(), i, rng.choice(DOMAINS))
    profile = {
        "tier": rng.choice(["free", "pro", "enterprise"]),
        "newsletter": rng.random() < 0.3,
        "tags": [rng.choice(WORDS) for _ in range(rng.randint(0, 4))],
        "address": {"city": rng.choice(WORDS).capitalize(), "zip": "%05d" % rng.randint(0, 99999)},
    }
    return "(%d,%s,%s,%s,%.2f,%s,%s)" % (
        i, sql_str(email), sql_str(first + " " + last), timestamp(rng),
        rng.uniform(-500, 20000), sql_str(json.dumps(profile, separators=(",", ":"))),
        sql_str(text(rng, 5, 40)))


def order(rng, i, customers):
    items = [{"sku": "SKU-%06d" % rng.randint(0, 999999), "qty": rng.randint(1, 9),
              "price": round(rng.uniform(1, 400), 2)} for _ in range(rng.randint(1, 5))]
    return "(%d,%d,%.2f,%s,%s,%s,%s)" % (
        i, rng.randint(1, customers), sum(x["qty"] * x["price"] for x in items),
        sql_str(rng.choice(STATUSES)), timestamp(rng),
        sql_str(json.dumps(items, separators=(",", ":"))), sql_str(text(rng, 0, 60)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=float, default=700)
    ap.add_argument("--seed", type=int, default=20261122)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    target = int(a.size_mb * 1_000_000)
    out = sys.stdout
    written = 0

    def emit(s):
        nonlocal written
        out.write(s)
        written += len(s)

    emit("SET autocommit=0, unique_checks=0, foreign_key_checks=0;\n")
    emit("CREATE TABLE customers (id INT PRIMARY KEY, email VARCHAR(120) NOT NULL, "
         "name VARCHAR(80), created TIMESTAMP NULL, balance DECIMAL(12,2), profile JSON, "
         "notes TEXT) ENGINE=InnoDB;\n")
    emit("CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id INT NOT NULL, "
         "amount DECIMAL(12,2), status VARCHAR(16), created DATETIME, items JSON, "
         "comment TEXT, KEY (customer_id)) ENGINE=InnoDB;\n")
    # A tenth of the volume is customers, the rest orders.
    customers = 0
    while written < target // 10:
        rows = [customer(rng, customers + k + 1) for k in range(ROWS_PER_INSERT)]
        customers += ROWS_PER_INSERT
        emit("INSERT INTO customers VALUES " + ",".join(rows) + ";\n")
    orders = 0
    while written < target:
        rows = [order(rng, orders + k + 1, customers) for k in range(ROWS_PER_INSERT)]
        orders += ROWS_PER_INSERT
        emit("INSERT INTO orders VALUES " + ",".join(rows) + ";\n")
        if orders % 50_000 == 0:
            emit("COMMIT;\n")
    emit("COMMIT;\n")
    print("generated %d customers, %d orders, %.0f MB of SQL" % (customers, orders, written / 1e6),
          file=sys.stderr)


if __name__ == "__main__":
    main()

"""A small tenant-scoped ERP directory (employees and sales orders) backed by SQLite.

It stands in for the company system a real deployment would call, and it is real enough to prove
the two rules that matter: **every query is scoped by tenant** (`WHERE tenant = ?`, the tenant
coming from the verified JWT, never from the model), and **ids repeat across tenants** so that a
leak would be visible (both tenants have an `E1001` and an `SO-1001`, different records).

The database lives at `SWITCHBOARD_ERP_DATABASE_PATH` (default
`<SWITCHBOARD_DATA_DIR>/erp.sqlite3`). It is created and seeded on first open; seeding is idempotent
(`INSERT OR IGNORE`), so reopening never duplicates or overwrites rows. Access goes through
`aiosqlite` (a worker thread per connection), so no query blocks the event loop.

Seed data — employees:

| tenant | id | name | department | status | manager | salary (yearly) |
|---|---|---|---|---|---|---|
| acme | E1001 | Ada Lovelace | Engineering | active | E1004 | 128,000 USD |
| acme | E1002 | Grace Hopper | Finance | on_leave | E1004 | 135,000 USD |
| acme | E1003 | Alan Turing | Research | terminated | E1004 | 120,000 USD |
| acme | E1004 | Katherine Johnson | Engineering | active | – | 150,000 USD |
| globex | E1001 | Hank Scorpio | Executive | active | – | 990,000 USD |
| globex | E1002 | Homer Simpson | Safety | active | E1001 | 48,000 USD |
| globex | E2001 | Mindy Simmons | Safety | on_leave | E1001 | 52,000 USD |

Emails are `first.last@<tenant>.example`.

Seed data — sales orders:

| tenant | id | employee | customer | amount | status | created |
|---|---|---|---|---|---|---|
| acme | SO-1001 | E1001 | Initech | 1,250.00 USD | open | 2026-01-12 |
| acme | SO-1002 | E1001 | Umbrella Corp | 980.50 EUR | shipped | 2026-01-20 |
| acme | SO-1003 | E1002 | Hooli | 15,000.00 USD | open | 2026-02-03 |
| acme | SO-1004 | E1001 | Wayne Enterprises | 4,200.00 USD | open | 2026-02-14 |
| acme | SO-1005 | E1004 | Stark Industries | 310.00 USD | cancelled | 2026-02-20 |
| globex | SO-1001 | E1001 | Springfield Power | 99,999.99 USD | open | 2026-01-05 |
| globex | SO-2001 | E1002 | Kwik-E-Mart | 45.00 USD | cancelled | 2026-01-18 |

Try: as an `acme` user ask "who is E1001?" (Ada Lovelace), as a `globex` user the same question
(Hank Scorpio); `E1003` exists only for acme and `E2001` only for globex.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import aiosqlite

EmployeeStatus = Literal["active", "on_leave", "terminated"]
OrderStatus = Literal["open", "shipped", "cancelled"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS employees (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    department TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'on_leave', 'terminated')),
    email TEXT NOT NULL,
    salary INTEGER NOT NULL,
    salary_currency TEXT NOT NULL,
    manager_id TEXT,
    PRIMARY KEY (tenant, id)
);
CREATE TABLE IF NOT EXISTS orders (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    employee_id TEXT NOT NULL,
    customer TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'shipped', 'cancelled')),
    created TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS orders_by_employee ON orders (tenant, employee_id, status);
"""

_EMPLOYEES: list[tuple[str, str, str, str, str, int, str | None]] = [
    # tenant, id, name, department, status, yearly salary (USD), manager
    ("acme", "E1001", "Ada Lovelace", "Engineering", "active", 128_000, "E1004"),
    ("acme", "E1002", "Grace Hopper", "Finance", "on_leave", 135_000, "E1004"),
    ("acme", "E1003", "Alan Turing", "Research", "terminated", 120_000, "E1004"),
    ("acme", "E1004", "Katherine Johnson", "Engineering", "active", 150_000, None),
    ("globex", "E1001", "Hank Scorpio", "Executive", "active", 990_000, None),
    ("globex", "E1002", "Homer Simpson", "Safety", "active", 48_000, "E1001"),
    ("globex", "E2001", "Mindy Simmons", "Safety", "on_leave", 52_000, "E1001"),
]

_ORDERS: list[tuple[str, str, str, str, int, str, str, str]] = [
    # tenant, id, employee, customer, amount in cents, currency, status, created
    ("acme", "SO-1001", "E1001", "Initech", 125_000, "USD", "open", "2026-01-12"),
    ("acme", "SO-1002", "E1001", "Umbrella Corp", 98_050, "EUR", "shipped", "2026-01-20"),
    ("acme", "SO-1003", "E1002", "Hooli", 1_500_000, "USD", "open", "2026-02-03"),
    ("acme", "SO-1004", "E1001", "Wayne Enterprises", 420_000, "USD", "open", "2026-02-14"),
    ("acme", "SO-1005", "E1004", "Stark Industries", 31_000, "USD", "cancelled", "2026-02-20"),
    ("globex", "SO-1001", "E1001", "Springfield Power", 9_999_999, "USD", "open", "2026-01-05"),
    ("globex", "SO-2001", "E1002", "Kwik-E-Mart", 4_500, "USD", "cancelled", "2026-01-18"),
]


@dataclass(frozen=True, slots=True)
class Employee:
    id: str
    name: str
    department: str
    status: EmployeeStatus
    email: str
    salary: int
    salary_currency: str
    manager_id: str | None


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    employee_id: str
    customer: str
    amount: Decimal
    currency: str
    status: OrderStatus
    created: str

    @property
    def amount_text(self) -> str:
        return f"{self.amount:,.2f} {self.currency}"


_EMPLOYEE_COLUMNS = "id, name, department, status, email, salary, salary_currency, manager_id"
_ORDER_COLUMNS = "id, employee_id, customer, amount_cents, currency, status, created"


def _employee(row: Any) -> Employee:
    return Employee(*row)


def _order(row: Any) -> Order:
    order_id, employee_id, customer, cents, currency, status, created = row
    return Order(order_id, employee_id, customer, Decimal(cents) / 100, currency, status, created)


def _email(tenant: str, name: str) -> str:
    return f"{name.lower().replace(' ', '.')}@{tenant}.example"


class ErpDirectory:
    """Tenant-scoped read access to employees and orders. Open with `await ErpDirectory.open(path)`."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._db = connection

    @classmethod
    async def open(cls, path: Path | str) -> ErpDirectory:
        """Open (creating and seeding if needed) the ERP database at `path` (`":memory:"` works)."""
        if str(path) != ":memory:":
            await asyncio.to_thread(Path(path).parent.mkdir, parents=True, exist_ok=True)
        connection = await aiosqlite.connect(path)
        try:
            await connection.executescript(_SCHEMA)
            await connection.executemany(
                "INSERT OR IGNORE INTO employees VALUES (?, ?, ?, ?, ?, ?, ?, 'USD', ?)",
                [(t, i, n, d, s, _email(t, n), pay, m) for t, i, n, d, s, pay, m in _EMPLOYEES],
            )
            await connection.executemany(
                "INSERT OR IGNORE INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _ORDERS
            )
            await connection.commit()
        except BaseException:
            await connection.close()
            raise
        return cls(connection)

    async def aclose(self) -> None:
        await self._db.close()

    async def get_employee(self, tenant: str, employee_id: str) -> Employee | None:
        async with self._db.execute(
            f"SELECT {_EMPLOYEE_COLUMNS} FROM employees WHERE tenant = ? AND id = ?", (tenant, employee_id)
        ) as cursor:
            row = await cursor.fetchone()
        return _employee(row) if row else None

    async def get_order(self, tenant: str, order_id: str) -> Order | None:
        async with self._db.execute(
            f"SELECT {_ORDER_COLUMNS} FROM orders WHERE tenant = ? AND id = ?", (tenant, order_id)
        ) as cursor:
            row = await cursor.fetchone()
        return _order(row) if row else None

    async def order_counts(self, tenant: str) -> dict[OrderStatus, int]:
        """How many of the tenant's orders are open, shipped and cancelled (every status listed)."""
        counts: dict[OrderStatus, int] = {"open": 0, "shipped": 0, "cancelled": 0}
        async with self._db.execute(
            "SELECT status, COUNT(*) FROM orders WHERE tenant = ? GROUP BY status", (tenant,)
        ) as cursor:
            for status, count in await cursor.fetchall():
                counts[status] = int(count)
        return counts

    async def open_orders_for(self, tenant: str, employee_id: str) -> list[Order]:
        """The employee's open orders, oldest first (empty for an unknown employee)."""
        async with self._db.execute(
            f"SELECT {_ORDER_COLUMNS} FROM orders WHERE tenant = ? AND employee_id = ? AND status = 'open' "
            "ORDER BY created, id",
            (tenant, employee_id),
        ) as cursor:
            rows = await cursor.fetchall()
        return [_order(row) for row in rows]

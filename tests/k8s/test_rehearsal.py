"""Rehearse `kubectl apply -k k8s/overlays/dev` on this machine, without a cluster.

The rendered dev overlay's workloads run as local processes wired only by what the manifests say
(see rehearsal.py): PostgreSQL (a throwaway local cluster set up with the StatefulSet's user,
password and database, password authentication on), MinIO (moto's S3 server), then the order a
cluster goes through on a first apply:

1. the agent pod's init container (`switchboard migrate --check`) waits for the schema, changing nothing;
2. the Jobs run: `switchboard migrate`, then the bucket script mounted from its ConfigMap;
3. the init container finishes, the three Deployments start together and pass their startup and
   readiness probes, run as the kubelet would run them (native gRPC health checks, HTTP GETs, TCP);
4. a chat and an upload go through the edge's Service port, as an Ingress or port-forward would send
   them; the stream is validated with chatkit.types, the thread is in PostgreSQL, the file in S3;
5. SIGTERM: every service drains and exits 0 within terminationGracePeriodSeconds minus its preStop
   pause, and none wrote anything outside its volumes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import pytest
from chatkit.types import (
    Attachment,
    ThreadCreatedEvent,
    ThreadItemDoneEvent,
    UserMessageItem,
    WidgetItem,
)
from minio import Minio
from pydantic import TypeAdapter

from services.common.auth import mint_token
from tests.k8s.manifests import Rendered, render
from tests.k8s.rehearsal import LocalCluster, Process, make_root, probe_once, wait_probe
from tests.support.chatkit_wire import assistant_text, request, stream, user_input
from tests.support.postgres import PostgresCluster
from tests.support.s3 import running_s3

pytestmark = pytest.mark.timeout(180)

ATTACHMENT: Final = TypeAdapter[Attachment](Attachment)
TENANT: Final = "acme"
JOB_TIMEOUT_S: Final = 90.0
INIT_OBSERVE_S: Final = 4.0
"""How long the agent's init container runs before the Jobs start (it checks every 3 s)."""
READY_TIMEOUT_S: Final = 60.0


@dataclass
class Rehearsal:
    rendered: Rendered
    cluster: LocalCluster
    postgres: PostgresCluster
    s3_endpoint: str
    schema_wait: Process
    """The agent pod's init container, started before the migration Job."""
    was_waiting: bool
    jobs: dict[str, Process]
    services: dict[str, Process]
    edge_url: str
    started_in_s: dict[str, float] = field(default_factory=dict)

    def headers(self, user: str = "k8s-rehearsal") -> dict[str, str]:
        secret = self.services["edge"].container.env["SWITCHBOARD_JWT_SECRET"]
        return {"Authorization": f"Bearer {mint_token(secret, tenant=TENANT, user=user)}"}

    def database_url_as_admin(self) -> str:
        database = self.rendered.container("StatefulSet", "switchboard-postgres").env["POSTGRES_DB"]
        return f"{self.postgres.url(database)}"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _identifier(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _start_postgres(rendered: Rendered, cluster: LocalCluster) -> PostgresCluster:
    """A local PostgreSQL on the port behind switchboard-postgres, with the StatefulSet's user,
    password and database (what the postgres image's entrypoint creates), password-checked: the
    URL in the agent's Secret must carry the same credentials."""
    container = rendered.container("StatefulSet", "switchboard-postgres")
    postgres = PostgresCluster(port=cluster.local_port(container, "postgres"))
    try:
        postgres.start()
        user, password, database = (
            container.env[k] for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")
        )
        admin = postgres.url("postgres")
        # The database owner, not a superuser: what a managed PostgreSQL gives the application.
        postgres.psql(admin, f"CREATE ROLE {_identifier(user)} LOGIN PASSWORD {_literal(password)}")
        postgres.psql(admin, f"CREATE DATABASE {_identifier(database)} OWNER {_identifier(user)}")
        hba = postgres.data / "pg_hba.conf"
        hba.write_text(
            "host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
            + hba.read_text()
        )
        postgres.psql(admin, "SELECT pg_reload_conf()")
    except BaseException:
        postgres.remove()
        raise
    return postgres


@pytest.fixture(scope="module")
def rehearsal() -> Iterator[Rehearsal]:
    rendered = render("dev")
    root = make_root()
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        cluster = LocalCluster(rendered, root)
        stack.callback(cluster.stop_all)
        postgres = _start_postgres(rendered, cluster)
        stack.callback(postgres.remove)
        minio = rendered.container("StatefulSet", "switchboard-minio")
        s3_endpoint = stack.enter_context(running_s3(cluster.local_port(minio, "s3")))
        containers = rendered.service_containers()

        # 1. The pods are scheduled at once; the agent's init container waits for the schema.
        pods: dict[str, list[Process]] = {}
        for name, container in containers.items():
            workload = container.workload["metadata"]["name"]
            inits = [cluster.process(init) for init in rendered.init_containers("Deployment", workload)]
            pods[name] = [*inits, cluster.process(container)]
        waiting = pods["agent"][0]
        waiting.start()
        time.sleep(INIT_OBSERVE_S)
        still_waiting = waiting.running()

        # 2. The Jobs, each to completion.
        jobs = {}
        for job in rendered.of_kind("Job"):
            name = job["metadata"]["name"]
            process = cluster.process(rendered.container("Job", name))
            process.start()
            deadline = min(float(job["spec"].get("activeDeadlineSeconds", JOB_TIMEOUT_S)), JOB_TIMEOUT_S)
            code = process.wait(deadline)
            assert code == 0, f"Job {name} failed ({code}):\n{process.logs()}"
            jobs[name] = process

        # 3. Init containers run to completion, then the main containers start; then their probes,
        #    as the kubelet runs them.
        started = time.monotonic()
        for processes in pods.values():
            for init in processes[:-1]:
                if init.popen is None:
                    init.start()
                code = init.wait(JOB_TIMEOUT_S)
                assert code == 0, f"{init.container.name} failed ({code}):\n{init.logs()}"
        services = {name: processes[-1] for name, processes in pods.items()}
        for process in services.values():
            process.start()
        started_in: dict[str, float] = {}
        for name, process in services.items():
            spec = process.container.spec
            if "startupProbe" in spec:
                probe = spec["startupProbe"]
                budget = float(probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3))
                wait_probe(cluster, process, "startupProbe", budget)
            wait_probe(cluster, process, "readinessProbe", READY_TIMEOUT_S)
            started_in[name] = time.monotonic() - started
        edge_port = cluster.service_port("switchboard-edge", "http")
        yield Rehearsal(
            rendered,
            cluster,
            postgres,
            s3_endpoint,
            waiting,
            still_waiting,
            jobs,
            services,
            f"http://127.0.0.1:{edge_port}",
            started_in,
        )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


def test_agent_pods_wait_for_the_migration_without_changing_the_schema(rehearsal: Rehearsal) -> None:
    assert rehearsal.was_waiting, f"the init container did not wait:\n{rehearsal.schema_wait.logs()}"
    assert rehearsal.schema_wait.exit_code == 0
    logs = rehearsal.schema_wait.logs()
    assert "schema revision none" in logs, logs  # it saw the empty database and left it alone
    migrate = rehearsal.jobs["switchboard-migrate"].logs()
    assert "upgraded from nothing" in migrate, migrate  # so the Job found it empty: the check changed nothing


def test_jobs_migrated_the_database_and_prepared_the_bucket(rehearsal: Rehearsal) -> None:
    revision = rehearsal.postgres.psql(
        rehearsal.database_url_as_admin(), "SELECT version_num FROM alembic_version"
    )
    assert revision, "switchboard migrate left no revision"
    upload = rehearsal.services["upload"].env
    s3 = Minio(
        rehearsal.s3_endpoint,
        access_key=upload["MINIO_ACCESS_KEY"],
        secret_key=upload["MINIO_SECRET_KEY"],
        secure=False,
        region=upload["MINIO_REGION"],
    )
    assert s3.bucket_exists(upload["MINIO_BUCKET"])
    lifecycle = s3.get_bucket_lifecycle(upload["MINIO_BUCKET"])
    assert lifecycle is not None, "the bucket Job set no lifecycle rule"
    # The Job's rule, beside the ones the upload service adds at start (the sweep's expiry of uploads/).
    aborts = [rule.abort_incomplete_multipart_upload for rule in lifecycle.rules]
    assert any(abort is not None and abort.days_after_initiation == 1 for abort in aborts), lifecycle.rules


def test_every_probe_passes_where_the_manifests_point_it(rehearsal: Rehearsal) -> None:
    for name, process in rehearsal.services.items():
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            if kind in process.container.spec:
                reason = probe_once(rehearsal.cluster, process.container, process.container.spec[kind])
                assert reason is None, f"{name} {kind}: {reason}\n{process.logs()}"
        startup = process.container.spec.get("startupProbe") or process.container.spec["livenessProbe"]
        budget = startup.get("initialDelaySeconds", 0) + startup.get("periodSeconds", 10) * startup.get(
            "failureThreshold", 3
        )
        assert rehearsal.started_in_s[name] < budget, (
            f"{name} took {rehearsal.started_in_s[name]:.1f} s to be ready"
        )


async def test_a_chat_streams_through_the_edge_into_postgres(
    rehearsal: Rehearsal, http: aiohttp.ClientSession
) -> None:
    events = await stream(
        http,
        rehearsal.edge_url,
        request("threads.create", input=user_input("Hello! Who is employee E1001?")),
        rehearsal.headers(),
    )
    created = events[0]
    assert isinstance(created, ThreadCreatedEvent)
    assert assistant_text(events), [event.type for event in events]
    widgets = [e for e in events if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, WidgetItem)]
    assert widgets, "the ERP tool (sample database in the agent's data volume) answered with a card"
    count = rehearsal.postgres.psql(
        rehearsal.database_url_as_admin(), f"SELECT count(*) FROM threads WHERE id = '{created.thread.id}'"
    )
    assert count == "1", "the thread is stored in PostgreSQL"
    data = rehearsal.cluster.volume_dir(rehearsal.services["agent"].container, "data")
    assert (data / "erp.sqlite3").exists(), "the ERP sample database lives in the data emptyDir"
    assert not list(data.glob("switchboard.sqlite3*")), "the agent fell back to SQLite"


async def test_an_upload_goes_through_the_edge_to_object_storage_and_back_to_the_agent(
    rehearsal: Rehearsal, http: aiohttp.ClientSession
) -> None:
    content = b"Quarterly numbers: all good.\n" * 20
    form = aiohttp.FormData()
    form.add_field("file", content, filename="notes.txt", content_type="text/plain")
    async with http.post(
        f"{rehearsal.edge_url}/chatkit/api/upload", data=form, headers=rehearsal.headers()
    ) as response:
        raw = await response.read()
        assert response.status == 200, raw.decode(errors="replace")
    attachment = ATTACHMENT.validate_json(raw)
    assert attachment.name == "notes.txt"

    events = await stream(
        http,
        rehearsal.edge_url,
        request(
            "threads.create",
            input={**user_input("Please summarise the attached notes."), "attachments": [attachment.id]},
        ),
        rehearsal.headers(),
    )
    user = next(
        e for e in events if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, UserMessageItem)
    )
    assert isinstance(user.item, UserMessageItem) and [a.id for a in user.item.attachments] == [attachment.id]
    assert "notes.txt" in assistant_text(events), "the agent read the attachment through the upload service"

    upload = rehearsal.services["upload"].env
    s3 = Minio(
        rehearsal.s3_endpoint,
        access_key=upload["MINIO_ACCESS_KEY"],
        secret_key=upload["MINIO_SECRET_KEY"],
        secure=False,
        region=upload["MINIO_REGION"],
    )
    keys = [
        str(o.object_name)
        for o in s3.list_objects(upload["MINIO_BUCKET"], prefix=f"objects/{TENANT}/", recursive=True)
    ]
    assert any(key.endswith(attachment.id) for key in keys), keys


def test_services_drain_within_their_grace_period_and_write_only_to_volumes(rehearsal: Rehearsal) -> None:
    for name in ("edge", "agent", "upload"):  # the order a rollout or scale-down does not guarantee: any
        process = rehearsal.services[name]
        pod = process.container.pod_spec
        pause = float(process.container.spec["lifecycle"]["preStop"]["exec"]["command"][1])
        budget = float(pod["terminationGracePeriodSeconds"]) - pause
        code = process.terminate(timeout=budget)
        assert code == 0, f"{name} exited with {code} on SIGTERM:\n{process.logs()}"
        assert process.stopped_in_s is not None and process.stopped_in_s < budget
    for process in [*rehearsal.services.values(), *rehearsal.jobs.values()]:
        written = [p for p in rehearsal.cluster.rootfs(process.container).rglob("*") if p.is_file()]
        assert not written, f"{process.container.name} wrote to its read-only root filesystem: {written}"
    assert not (rehearsal.cluster.root / "nonexistent-home").exists(), "something wrote to $HOME"

# Sourced by scripts/test: make sure the local RabbitMQ and PostgreSQL the tests use are up.
# They are system services here; this only starts them when they are installed but stopped.

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {  # wait_port PORT SECONDS
  for _ in $(seq 1 "$2"); do port_open "$1" && return 0; sleep 1; done
  return 1
}

ensure_rabbitmq() {
  port_open 5672 && return 0
  if command -v rabbitmq-server >/dev/null; then
    echo "RabbitMQ is not running on 127.0.0.1:5672; starting it"
    rabbitmq-server -detached || true
    wait_port 5672 90 && return 0
  fi
  echo "error: no RabbitMQ on 127.0.0.1:5672; install the Debian package rabbitmq-server" >&2
  return 1
}

ensure_postgresql() {
  port_open 5432 && return 0
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "PostgreSQL is not running on 127.0.0.1:5432; starting it"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    wait_port 5432 60 && return 0
  fi
  echo "error: no PostgreSQL on 127.0.0.1:5432 (tests need it; trust auth, database test)" >&2
  return 1
}

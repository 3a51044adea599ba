#!/usr/bin/env bash
# One-shot setup before the Airflow services start (docker-compose.yaml's airflow-init): the
# secrets every component shares, the admin password (printed once), the metadata DB, and a check
# that the aws_default connection reaches localcloud. Idempotent: a second run changes nothing.
set -euo pipefail

auth_dir=/opt/airflow/auth
umask 077

new_secret() { python -c 'import secrets; print(secrets.token_urlsafe(48), end="")'; }

[ -s "$auth_dir/jwt_secret" ] || new_secret > "$auth_dir/jwt_secret"
[ -s "$auth_dir/fernet_key" ] \
  || python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode(), end="")' \
     > "$auth_dir/fernet_key"
if [ ! -s "$auth_dir/passwords.json" ]; then
  password="$(new_secret)"
  printf '{"admin": "%s"}\n' "$password" > "$auth_dir/passwords.json"
  echo "Airflow admin password (shown once; kept in the airflow-auth volume): $password"
fi

airflow db migrate

# The same connection every task uses: fail here, with the reason, rather than in the first task.
python - <<'PY'
from airflow.providers.amazon.aws.hooks.s3 import S3Hook

s3 = S3Hook(aws_conn_id="aws_default").conn
buckets = [bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])]
print(f"aws_default reaches {s3.meta.endpoint_url}; buckets: {buckets or 'none yet'}")
PY

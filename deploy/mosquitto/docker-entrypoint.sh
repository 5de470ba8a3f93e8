#!/bin/sh
# Mosquitto container start: hash the passwords from the environment into the data
# volume, then run the broker. The password file is rebuilt on every start, so rotating a
# password is: change it in .env, `docker compose up -d mosquitto`.
set -eu
/mosquitto/config/make-passwd.sh /mosquitto/config/accounts /mosquitto/data/passwd
chown mosquitto:mosquitto /mosquitto/data/passwd
exec mosquitto -c /mosquitto/config/mosquitto.conf

#!/bin/sh
# Build Mosquitto's password file from an accounts list and the environment.
#
#   make-passwd.sh ACCOUNTS OUTPUT
#
# ACCOUNTS has one "username ENV_VAR" per line (# comments allowed); each account's
# password is read from ENV_VAR and hashed by mosquitto_passwd (PBKDF2-SHA512). A missing
# or empty variable stops with a message naming it. OUTPUT is replaced atomically, mode 600.
set -eu
accounts=${1:?usage: make-passwd.sh ACCOUNTS OUTPUT}
output=${2:?usage: make-passwd.sh ACCOUNTS OUTPUT}
tmp="$output.tmp.$$"
trap 'rm -f "$tmp"' EXIT
umask 077
: > "$tmp"
missing=""
count=0
while read -r user var _rest; do
  case "$user" in ''|'#'*) continue ;; esac
  if [ -z "$var" ]; then
    echo "make-passwd: $accounts: account '$user' names no password variable" >&2
    exit 2
  fi
  case "$var" in
    *[!A-Za-z0-9_]*)
      echo "make-passwd: $accounts: '$var' (account '$user') is not a variable name" >&2
      exit 2 ;;
  esac
  eval "password=\${$var:-}"
  if [ -z "$password" ]; then
    missing="$missing $var"
    continue
  fi
  mosquitto_passwd -b "$tmp" "$user" "$password"
  count=$((count + 1))
done < "$accounts"
if [ -n "$missing" ]; then
  echo "make-passwd: no password in the environment for:$missing" >&2
  echo "make-passwd: set them (e.g. in .env, see .env.example) and start again" >&2
  exit 2
fi
mv "$tmp" "$output"
trap - EXIT
echo "make-passwd: $count accounts written to $output"

#!/bin/sh
# Start Dovecot for the compose demo: write the passwd-file for $IMAP_USER from the password
# file (a compose secret), seed the user's Maildir from $SEED_DIR once (the first start of an
# empty volume), then replace this shell with Dovecot in the foreground (signals reach it).
# The paths can be changed through the environment (the tests run this script outside a
# container with a stub `dovecot`).
set -eu

user=${IMAP_USER:-sample}
password_file=${IMAP_PASSWORD_FILE:-/run/secrets/imap_password}
seed_dir=${SEED_DIR:-/seed/mailbox}
mail_root=${MAIL_ROOT:-/srv/mail}
passwd_file=${PASSWD_FILE:-/etc/dovecot/users}
mail_owner=${MAIL_OWNER:-vmail:vmail}
passwd_group=${PASSWD_GROUP:-dovecot}

if [ ! -r "$password_file" ]; then
    echo "start-dovecot: no password file at $password_file" >&2
    exit 2
fi
password=$(cat "$password_file")
case "$password" in
    "" | *:* | *"
"*)
        echo "start-dovecot: the password in $password_file must be one line without ':'" >&2
        exit 2
        ;;
esac

umask 027
printf '%s:{PLAIN}%s::::::\n' "$user" "$password" >"$passwd_file"
# Read by the auth process, which runs as the dovecot user.
chgrp "$passwd_group" "$passwd_file"

maildir=$mail_root/$user/Maildir
if [ ! -d "$maildir" ]; then
    mkdir -p "$maildir.seeding/cur" "$maildir.seeding/new" "$maildir.seeding/tmp"
    for sub in cur new; do
        if [ -d "$seed_dir/$sub" ]; then
            find "$seed_dir/$sub" -type f ! -name '.*' -exec cp {} "$maildir.seeding/$sub/" \;
        fi
    done
    mv "$maildir.seeding" "$maildir"
    chown -R "$mail_owner" "$mail_root/$user"
    echo "start-dovecot: seeded $maildir with $(find "$maildir" -type f | wc -l) message(s) from $seed_dir"
fi

exec dovecot -F

#!/bin/bash
# A stand-in for the archiso serial console, for the console driver's tests:
# a login prompt, then root's zsh with a grml-like prompt (see zshrc here).
# $1 picks a failure to show instead: panic, rescue, or nothing for a normal login.
here=$(cd "$(dirname "$0")" && pwd)
case "${1:-}" in
  panic) printf '[    1.234] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n'; sleep 30; exit 0 ;;
  rescue) printf ':: Mounting ...\r\nERROR: device did not show up after 30 seconds...\r\n[rootfs ~]# '; sleep 30; exit 0 ;;
  bash) shell=(bash --norc --noprofile -i) ;;
  *) shell=(zsh -i) ;;
esac
printf '\r\nArch Linux 6.10.0-arch1-1 (ttyS0)\r\n\r\narchiso login: '
read -r user
if [ "$user" != root ]; then printf 'Login incorrect\r\n'; exit 1; fi
printf '\e[1;36mTo install \e[0m\e[1mArch Linux\e[0m follow the installation guide:\r\n\e[4mhttps://wiki.archlinux.org/title/Installation_guide\e[0m\r\n'
export ZDOTDIR=$here HOME=$here HISTFILE=/dev/null
exec "${shell[@]}"

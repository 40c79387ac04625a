# Sourced by the image scripts. offline IMAGE: true when images must be built locally, as
# OFFLINE says: 1 (always), 0 (never) or auto (the default: when IMAGE cannot be pulled).
offline() {
  case ${OFFLINE:-auto} in
    1 | true | yes) return 0 ;;
    0 | false | no) return 1 ;;
    auto)
      docker image inspect "$1" >/dev/null 2>&1 && return 1
      if docker pull -q "$1" >/dev/null 2>&1; then return 1; fi
      echo "$1 cannot be pulled: building locally (OFFLINE=0 to insist on the registry)" >&2
      return 0 ;;
    *) echo "OFFLINE=$OFFLINE: use 1, 0 or auto" >&2; exit 2 ;;
  esac
}

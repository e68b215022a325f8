# Sourced by the package() of every package cut from Debian (tests/standin/debian.py).
# repo.py writes manifest.tsv and files/ beside the PKGBUILD; each line is
#   f MODE DEST FILE     install FILE (relative to the PKGBUILD) at DEST
#   l MODE DEST TARGET   a symlink DEST -> TARGET
install_manifest() {
  local kind mode dest source
  while IFS=$'\t' read -r kind mode dest source; do
    case $kind in
    f) install -Dm"$mode" "$startdir/$source" "$pkgdir$dest" ;;
    l) install -dm755 "$pkgdir${dest%/*}" && ln -s "$source" "$pkgdir$dest" ;;
    *) echo "manifest: unknown kind '$kind' for $dest" >&2; return 1 ;;
    esac || return 1
  done <"$startdir/manifest.tsv"
}

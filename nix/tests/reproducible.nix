# The deb, rpm and OCI image built twice, from two independent derivations of
# the whole chain (binary included), must be bit-identical. On a mismatch the
# check names the artifact and shows diffoscope's report.
{ pkgs
, first
, second
}:
let
  inherit (pkgs) lib;
  compare = kind: ''
    compare ${kind} ${first.${kind}} ${second.${kind}}
  '';
in
pkgs.runCommand "peat-sidecar-reproducible"
{
  nativeBuildInputs = [ pkgs.diffoscopeMinimal ];
}
  ''
    status=0
    # Lists "sha256  relative/path" for a file or every file under a directory.
    digests() {
      if [ -d "$1" ]; then (cd "$1" && find . -type f | sort | xargs sha256sum); else sha256sum < "$1"; fi
    }
    compare() {
      if [ "$(digests "$2")" = "$(digests "$3")" ]; then
        echo "$1: identical"; digests "$2"
      else
        echo "$1: DIFFERS between the two builds"; status=1
        diffoscope --text - "$2" "$3" || true
      fi
    }
    ${lib.concatMapStrings compare (builtins.attrNames first)}
    if [ "$status" -ne 0 ]; then
      echo "the two builds differ: the artifacts are not reproducible"; exit 1
    fi
    mkdir -p "$out"
    ${lib.concatMapStrings (kind: "digests ${first.${kind}} > \"$out/${kind}.sha256\"\n") (builtins.attrNames first)}
  ''

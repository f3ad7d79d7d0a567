# Reads a systemd unit file into sections of settings, so the NixOS module
# runs the service with exactly the directives of the packaged unit
# (packaging/peat-sidecar.service) instead of a second, drifting copy.
#
# Result: { Unit = { After = [ "a b" ]; ... }; Service = { ... }; ... }
# where every key maps to the list of its assignments in file order
# (systemd allows repeated keys; an empty assignment is kept as "").
# Only builtins are used, so `cargo xtask nix-check` can evaluate it without
# a nixpkgs checkout.
text:
let
  # A trailing backslash continues a directive on the next line.
  joined = builtins.replaceStrings [ "\\\n" ] [ " " ] text;
  rawLines = builtins.filter builtins.isString (builtins.split "\n" joined);
  trim = line: let m = builtins.match "[[:space:]]*(.*[^[:space:]])[[:space:]]*" line; in if m == null then "" else builtins.head m;
  lines = map trim rawLines;

  isComment = line: line == "" || builtins.substring 0 1 line == "#" || builtins.substring 0 1 line == ";";
  sectionOf = line: builtins.match "[[]([A-Za-z0-9-]+)[]]" line;
  directiveOf = line: builtins.match "([A-Za-z0-9]+)[[:space:]]*=[[:space:]]*(.*)" line;

  step =
    state: line:
    let
      section = sectionOf line;
      directive = directiveOf line;
    in
    if isComment line then
      state
    else if section != null then
      state // { current = builtins.head section; }
    else if directive != null && state.current != null then
      state
      // {
        entries = state.entries ++ [
          {
            section = state.current;
            key = builtins.elemAt directive 0;
            value = builtins.elemAt directive 1;
          }
        ];
      }
    else
      throw "systemd unit: cannot read line `${line}`";

  parsed = builtins.foldl' step
    {
      current = null;
      entries = [ ];
    }
    lines;

  bySection = builtins.groupBy (e: e.section) parsed.entries;
in
builtins.mapAttrs
  (_: entries: builtins.mapAttrs (_: map (e: e.value)) (builtins.groupBy (e: e.key) entries))
  bySection

# flake.lock agrees with flake.nix: every input is locked, nothing else is,
# each lock entry is complete (rev, narHash, lastModified), points at the
# repository and branch the input names, and `follows`/`flake = false` match.
#
#   nix-instantiate --eval --strict nix/tests/lock-check.nix
let
  lock = builtins.fromJSON (builtins.readFile ../../flake.lock);
  inputs = (import ../../flake.nix).inputs;
  rootInputs = lock.nodes.${lock.root}.inputs;

  check = name: ok: if ok then name else throw "lock-check: ${name}";
  matches = regex: value: builtins.match regex value != null;

  inputChecks =
    name:
    let
      input = inputs.${name};
      node = lock.nodes.${rootInputs.${name}};
      # "github:owner/repo" or "github:owner/repo/ref"
      url = builtins.match "github:([^/]+)/([^/]+)(/(.+))?" input.url;
      wantsFollows = builtins.mapAttrs (_: i: [ i.follows ]) (input.inputs or { });
      nodeFollows = builtins.mapAttrs (_: v: if builtins.isList v then v else [ "<locked separately>" ]) (node.inputs or { });
    in
    [
      (check "${name}: url is a GitHub reference" (url != null))
      (check "${name}: locked to a GitHub revision" (node.locked.type == "github"))
      (check "${name}: owner and repo match the url" (
        node.locked.owner == builtins.elemAt url 0
        && node.locked.repo == builtins.elemAt url 1
        && node.original.owner == builtins.elemAt url 0
        && node.original.repo == builtins.elemAt url 1
      ))
      (check "${name}: branch in the lock matches the url" ((node.original.ref or null) == builtins.elemAt url 3))
      (check "${name}: rev is a full commit id" (matches "[0-9a-f]{40}" node.locked.rev))
      (check "${name}: narHash is a SHA-256 SRI hash" (matches "sha256-[A-Za-z0-9+/]{43}=" node.locked.narHash))
      (check "${name}: lastModified is set" (builtins.isInt node.locked.lastModified && node.locked.lastModified > 0))
      (check "${name}: flake = false agrees" ((input.flake or true) == (node.flake or true)))
      (check "${name}: follows agree" (wantsFollows == nodeFollows))
    ];
in
[
  (check "lock file version 7" (lock.version == 7))
  (check "root inputs are exactly flake.nix's inputs" (builtins.attrNames rootInputs == builtins.attrNames inputs))
  (check "no unused nodes" (builtins.length (builtins.attrNames lock.nodes) == builtins.length (builtins.attrNames inputs) + 1))
]
++ builtins.concatMap inputChecks (builtins.attrNames inputs)

# Distribution cloud images the VM checks boot, pinned by URL and SHA-256.
# Each hash is the one the distribution publishes for that file (Ubuntu's
# SHA256SUMS of the dated release directory, Rocky's CHECKSUM in the vault),
# written here in SRI form. The dated/vault URLs never change content; a
# pruned Ubuntu release directory makes the fetch fail loudly, never drift.
{
  ubuntu-22_04 = {
    family = "deb";
    url = "https://cloud-images.ubuntu.com/releases/22.04/release-20260227/ubuntu-22.04-server-cloudimg-amd64.img";
    # e66ef756881b5e682c496112201382abd76291797a7395bf81fd1bd0888f5b6f
    hash = "sha256-5m73VogbXmgsSWESIBOCq9dikXl6c5W/gf0b0IiPW28=";
  };
  ubuntu-24_04 = {
    family = "deb";
    url = "https://cloud-images.ubuntu.com/releases/noble/release-20260225/ubuntu-24.04-server-cloudimg-amd64.img";
    # 7aa6d9f5e8a3a55c7445b138d31a73d1187871211b2b7da9da2e1a6cbf169b21
    hash = "sha256-eqbZ9eijpVx0RbE40xpz0Rh4cSEbK32p2i4abL8WmyE=";
  };
  rocky-8 = {
    family = "rpm";
    url = "https://download.rockylinux.org/vault/rocky/8.9/images/x86_64/Rocky-8-GenericCloud-Base-8.9-20231119.0.x86_64.qcow2";
    # d17f15a7649dd064795306c114b90fc5062e7d5fefa9e9f0bd6b7ce1aeac3ae5
    hash = "sha256-0X8Vp2Sd0GR5UwbBFLkPxQYufV/vqenwvWt84a6sOuU=";
  };
  rocky-9 = {
    family = "rpm";
    url = "https://download.rockylinux.org/vault/rocky/9.6/images/x86_64/Rocky-9-GenericCloud-Base-9.6-20250531.0.x86_64.qcow2";
    # 2c72815bb83cadccbede4704780e9b52033722db8a45c3fb02130aa380690a3d
    hash = "sha256-LHKBW7g8rcy+3kcEeA6bUgM3ItuKRcP7AhMKo4BpCj0=";
  };
}

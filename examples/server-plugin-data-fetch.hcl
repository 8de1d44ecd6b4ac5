# Server plugin data for fleets whose EK chains NV does not complete: TPMs whose EK
# certificate's issuer is only published by AIA, and firmware TPMs (Intel PTT, AMD fTPM)
# that hold no EK certificate at all. Both fetches are off unless configured.
ek_policy = "cert"
ek_ca_path = "/etc/spire/tpm/ek-ca"

# A missing intermediate: fetched from the caIssuers URL of the certificate below it,
# only from these hosts, and never trusted as an anchor.
ek_aia_fetch {
  allowed_hosts = ["pki.infineon.com", "www.nuvoton.com"]
  timeout = "10s"
  max_size = 65536
  cache_path = "/var/lib/spire/tpm/aia-cache"
}

# No EK certificate from the agent: ask Intel's and AMD's services (the defaults), then
# verify the answer like a certificate from NV.
ek_cert_download {
  cache_path = "/var/lib/spire/tpm/ek-cert-cache"
  negative_cache = "5m"
  timeout = "10s"
  # service_urls { intel = "https://ek-mirror.example.com/intel/" }
  # allowed_hosts = ["ek-mirror.example.com"]
}

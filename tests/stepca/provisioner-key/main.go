// Makes a step-ca JWK provisioner key the way `step ca init` does, with the same library
// (go.step.sm/crypto/jose): a P-256 key whose kid is the RFC 7638 thumbprint, its
// public half for ca.json and the private half encrypted as a PBES2-HS256+A128KW /
// A256GCM compact JWE. The step CLI itself cannot be built from Debian's packages.
//
// usage: stepca-provisioner-key <password-file> <out-dir>
// writes <out-dir>/provisioner.pub.json, provisioner.jwk.json (0600), provisioner.jwe
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"go.step.sm/crypto/jose"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "stepca-provisioner-key:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) != 3 {
		return fmt.Errorf("usage: %s <password-file> <out-dir>", os.Args[0])
	}
	password, err := os.ReadFile(os.Args[1])
	if err != nil {
		return err
	}
	password = bytes.TrimRight(password, "\r\n")
	if len(password) == 0 {
		return fmt.Errorf("password file %s is empty", os.Args[1])
	}
	dir := os.Args[2]

	key, err := jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0)
	if err != nil {
		return err
	}
	if key.KeyID, err = jose.Thumbprint(key); err != nil {
		return err
	}
	jwe, err := jose.EncryptJWK(key, password)
	if err != nil {
		return err
	}
	compact, err := jwe.CompactSerialize()
	if err != nil {
		return err
	}
	private, err := json.Marshal(key)
	if err != nil {
		return err
	}
	public, err := json.Marshal(key.Public())
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "provisioner.jwk.json"), private, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "provisioner.pub.json"), public, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "provisioner.jwe"), []byte(compact), 0o644)
}

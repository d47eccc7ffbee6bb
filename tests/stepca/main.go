// The step-ca entry point. Debian's golang-github-smallstep-certificates-dev ships the
// library but drops cmd/step-ca; this is the missing main, built in GOPATH mode by
// tests/stepca/build.sh. Only the backends a file-based test CA needs are linked.
package main

import (
	"fmt"
	"os"

	"github.com/smallstep/certificates/commands"
	"github.com/urfave/cli"

	_ "github.com/smallstep/certificates/cas/softcas"
	_ "github.com/smallstep/certificates/cas/stepcas"
	_ "github.com/smallstep/certificates/kms/softkms"
)

func main() {
	app := cli.NewApp()
	app.Name = "step-ca"
	app.Usage = "an online X.509 certificate authority"
	app.UsageText = commands.AppCommand.UsageText
	app.Version = "0.19.0-debian"
	app.Flags = commands.AppCommand.Flags
	app.Action = commands.AppCommand.Action
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

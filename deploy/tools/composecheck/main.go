// Command composecheck loads compose files with compose-go, the loader that
// `docker compose` itself uses: the compose-spec JSON schema, interpolation,
// and the model's consistency (depends_on, volumes, networks). It is the
// check of deploy/compose.yaml on machines without the compose plugin. Every
// profile is enabled, so services behind a profile are checked too.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: composecheck FILE...")
		os.Exit(2)
	}
	failed := false
	for _, path := range os.Args[1:] {
		opts, err := cli.NewProjectOptions([]string{path}, cli.WithName("recstream"),
			cli.WithProfiles([]string{"*"}))
		if err == nil {
			var project interface{ ServiceNames() []string }
			p, lerr := opts.LoadProject(context.Background())
			err = lerr
			if err == nil {
				project = p
				fmt.Printf("%s: ok, services %v\n", path, project.ServiceNames())
			}
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

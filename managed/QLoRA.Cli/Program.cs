using QLoRA.Cli;

// qlora: the command-line tool (App builds the commands; docs/cli.md is the manual).
StdoutGuard.Install();
return new App().Main(args);

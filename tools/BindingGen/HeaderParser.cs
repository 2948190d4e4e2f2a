using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace QLoRA.BindingGen;

/// <summary>
/// Reads qlora.h through clang's JSON AST (<c>clang -Xclang -ast-dump=json</c>) and its macro
/// list (<c>clang -E -dM</c>) into an <see cref="AbiModel"/>. Any clang diagnostic, warnings
/// included, is an error: a header that does not compile cleanly as C11 and C++20 is never
/// turned into bindings (a missing include would otherwise turn size_t into int silently).
/// </summary>
public static partial class HeaderParser
{
    /// <summary>Flags for both languages: every warning clang has that matters for a public header.</summary>
    private static readonly string[] WarningFlags = ["-Wall", "-Wextra", "-Wpedantic", "-fno-color-diagnostics"];

    public static AbiModel Parse(string headerPath, string clang)
    {
        headerPath = Path.GetFullPath(headerPath);
        if (!File.Exists(headerPath)) throw new BindingGenException($"header not found: {headerPath}");
        byte[] bytes = File.ReadAllBytes(headerPath);
        string text = Encoding.UTF8.GetString(bytes);
        string sha = Convert.ToHexStringLower(SHA256.HashData(bytes));

        // C++ first: only for its diagnostics (the core includes the header from C++20).
        RunClang(clang, ["-x", "c++", "-std=c++20", "-fsyntax-only", .. WarningFlags, headerPath], headerPath, "C++20");
        string json = RunClang(clang, ["-x", "c", "-std=c11", "-fsyntax-only", .. WarningFlags,
                                       "-Xclang", "-ast-dump=json", headerPath], headerPath, "C11");
        string macros = RunClang(clang, ["-x", "c", "-std=c11", "-E", "-dM", .. WarningFlags, headerPath], headerPath, "C11 -dM");

        using JsonDocument doc = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 4096 });
        var reader = new AstReader(headerPath, text);
        reader.Read(doc.RootElement);
        return reader.Build(sha, ParseMacros(macros, text));
    }

    private static string RunClang(string clang, IReadOnlyList<string> args, string headerPath, string what)
    {
        var psi = new ProcessStartInfo(clang)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = Path.GetDirectoryName(headerPath)!,
        };
        foreach (string a in args) psi.ArgumentList.Add(a);
        Process process;
        try
        {
            process = Process.Start(psi) ?? throw new BindingGenException($"could not start {clang}");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new BindingGenException(
                $"could not run '{clang}' ({e.Message}). BindingGen needs clang 14: apt-get install clang-14 " +
                "(or pass --clang PATH / set QLORA_CLANG).");
        }
        using (process)
        {
            Task<string> stderr = process.StandardError.ReadToEndAsync();
            string stdout = process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            string diagnostics = stderr.Result.Trim();
            if (process.ExitCode != 0 || diagnostics.Length > 0)
                throw new BindingGenException(
                    $"clang ({what}) reported diagnostics for {headerPath}; BindingGen accepts none, warnings included " +
                    $"(exit code {process.ExitCode}):\n{diagnostics}");
            return stdout;
        }
    }

    [GeneratedRegex(@"^#define (QLORA_\w+) (.+)$", RegexOptions.Multiline)]
    private static partial Regex DefineLine();

    [GeneratedRegex(@"^\(?\s*(-?)\s*(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\s*\)?$")]
    private static partial Regex IntegerLiteral();

    // Object-like QLORA_* macros whose body is an integer literal (optionally negated and
    // parenthesised) become constants. Others (the export macro, include guards, strings,
    // expressions) are not part of the generated surface.
    private static List<ConstantDef> ParseMacros(string dump, string headerText)
    {
        var result = new List<ConstantDef>();
        foreach (Match m in DefineLine().Matches(dump.Replace("\r\n", "\n")))
        {
            string name = m.Groups[1].Value, body = m.Groups[2].Value.Trim();
            Match lit = IntegerLiteral().Match(body);
            if (!lit.Success) continue;
            string digits = lit.Groups[2].Value;
            long value;
            try
            {
                value = digits.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
                    ? checked((long)ulong.Parse(digits[2..], NumberStyles.HexNumber, CultureInfo.InvariantCulture))
                    : digits.Length > 1 && digits[0] == '0'
                        ? Convert.ToInt64(digits, 8)
                        : long.Parse(digits, CultureInfo.InvariantCulture);
            }
            catch (Exception e) when (e is OverflowException or FormatException or ArgumentException)
            {
                throw new BindingGenException($"#define {name} {body}: not an int64 value ({e.Message})");
            }
            if (lit.Groups[1].Value == "-") value = -value;
            int at = headerText.IndexOf("#define " + name, StringComparison.Ordinal);
            string docText = at < 0 ? "" : Comments.For(headerText, LineStart(headerText, at), LineEnd(headerText, at));
            result.Add(new ConstantDef(name, value, docText));
        }
        // In the order the header defines them.
        return [.. result.OrderBy(c => headerText.IndexOf("#define " + c.CName, StringComparison.Ordinal)).ThenBy(c => c.CName, StringComparer.Ordinal)];
    }

    private static int LineStart(string text, int at) => text.LastIndexOf('\n', Math.Max(0, at - 1)) + 1;

    private static int LineEnd(string text, int at)
    {
        int nl = text.IndexOf('\n', at);
        return nl < 0 ? text.Length : nl;
    }
}

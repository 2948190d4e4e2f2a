using System.Text;

namespace QLoRA.BindingGen;

/// <summary>Finds the comment a declaration carries in the header text (by byte offsets from the AST).</summary>
public static class Comments
{
    /// <summary>
    /// The comment block(s) directly above [begin, end) (no blank line between, each starting its own
    /// line) followed by the comment that starts on the declaration's last line, after it.
    /// </summary>
    public static string For(string text, int begin, int end)
    {
        var parts = new List<string>();
        int pos = begin;
        var leading = new List<string>();
        while (true)
        {
            int p = pos - 1, newlines = 0;
            while (p >= 0 && char.IsWhiteSpace(text[p]))
            {
                if (text[p] == '\n') newlines++;
                p--;
            }
            if (newlines > 1 || p < 1 || text[p] != '/' || text[p - 1] != '*') break;
            int open = text.LastIndexOf("/*", p - 1, StringComparison.Ordinal);
            if (open < 0) break;
            int lineStart = text.LastIndexOf('\n', Math.Max(0, open - 1)) + 1;
            if (open > 0 && text[lineStart..open].Trim().Length > 0) break; // trails other code
            leading.Insert(0, Clean(text[open..(p + 1)]));
            pos = open;
        }
        parts.AddRange(leading);

        int lineEnd = text.IndexOf('\n', Math.Min(end, text.Length));
        if (lineEnd < 0) lineEnd = text.Length;
        if (end < lineEnd)
        {
            string rest = text[end..lineEnd];
            int c = rest.IndexOf("/*", StringComparison.Ordinal);
            if (c >= 0 && rest[..c].Trim(' ', '\t', ';', ',', ')', '}').Length == 0)
            {
                int start = end + c;
                int close = text.IndexOf("*/", start + 2, StringComparison.Ordinal);
                if (close > 0) parts.Add(Clean(text[start..(close + 2)]));
            }
            else
            {
                int s = rest.IndexOf("//", StringComparison.Ordinal);
                if (s >= 0 && rest[..s].Trim(' ', '\t', ';', ',', ')', '}').Length == 0) parts.Add(Clean(rest[s..]));
            }
        }
        return string.Join(" ", parts.Where(p => p.Length > 0));
    }

    private static string Clean(string comment)
    {
        string body = comment.StartsWith("//", StringComparison.Ordinal) ? comment[2..] : comment[2..^2];
        var sb = new StringBuilder();
        foreach (string raw in body.Split('\n'))
        {
            string line = raw.Trim();
            if (line.StartsWith('*')) line = line[1..].Trim();
            if (line.Trim('-', '=', ' ').Length == 0) continue; // banner rules
            if (sb.Length > 0) sb.Append(' ');
            sb.Append(line);
        }
        return string.Join(" ", sb.ToString().Split(' ', StringSplitOptions.RemoveEmptyEntries));
    }
}

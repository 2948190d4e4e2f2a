using System.Text;

namespace QLoRA.BindingGen;

/// <summary>Builds source text with LF line endings and four-space indentation.</summary>
internal sealed class CodeWriter
{
    private readonly StringBuilder _sb = new();
    private int _indent;

    public CodeWriter Line(string text = "")
    {
        if (text.Length > 0) _sb.Append(' ', _indent * 4).Append(text);
        _sb.Append('\n');
        return this;
    }

    /// <summary>A line that opens a block: "{" is appended on its own line unless the text ends with it.</summary>
    public CodeWriter Open(string text = "{")
    {
        Line(text);
        if (!text.EndsWith('{')) Line("{");
        _indent++;
        return this;
    }

    public CodeWriter Close(string text = "}")
    {
        _indent--;
        return Line(text);
    }

    /// <summary>An XML doc summary (escaped), optionally with remarks.</summary>
    public CodeWriter Doc(string summary, string? remarks = null)
    {
        Line($"/// <summary>{Xml(summary)}</summary>");
        if (!string.IsNullOrEmpty(remarks)) Line($"/// <remarks>{remarks}</remarks>");
        return this;
    }

    public static string Xml(string text) => text.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;");

    /// <summary>A C spelling as an XML code element.</summary>
    public static string Code(string c) => $"<c>{Xml(c)}</c>";

    public override string ToString() => _sb.ToString();
}

using System.Globalization;
using System.Text.Json;

namespace QLoRA.BindingGen;

/// <summary>Walks clang's JSON AST and collects the declarations of one header.</summary>
internal sealed class AstReader(string headerPath, string headerText)
{
    private sealed record TypedefDecl(string Name, string QualType, int Begin, int End);
    private sealed record RecordDecl(string Tag, List<(string Name, string QualType, string Doc)> Fields, int Begin, int End);
    private sealed record EnumDecl(string? Tag, string Underlying, List<(string Name, long Value, string Doc)> Constants, int Begin, int End);
    private sealed record FunctionDecl(string Name, string QualType, List<(string Name, string QualType)> Params, int Begin, int End);

    private readonly List<TypedefDecl> _typedefs = [];
    private readonly List<RecordDecl> _records = [];
    private readonly List<string> _opaqueTags = []; // declaration order, for deterministic messages
    private readonly List<EnumDecl> _enums = [];
    private readonly List<FunctionDecl> _functions = [];
    private string? _currentFile;

    public void Read(JsonElement root)
    {
        foreach (JsonElement decl in root.GetProperty("inner").EnumerateArray())
        {
            string? file = decl.TryGetProperty("loc", out JsonElement loc) ? Track(loc) : _currentFile;
            Track(decl);
            if (file != headerPath || decl.TryGetProperty("isImplicit", out _)) continue;
            ReadTopLevel(decl);
        }
    }

    // clang writes a location's "file" only when it differs from the last location it wrote, so the
    // file of a node is known only by replaying every location in document order.
    private string? Track(JsonElement e)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.Object:
                if (e.TryGetProperty("offset", out _) && e.TryGetProperty("file", out JsonElement f))
                    _currentFile = f.GetString();
                foreach (JsonProperty p in e.EnumerateObject())
                    if (p.Name != "includedFrom") Track(p.Value);
                break;
            case JsonValueKind.Array:
                foreach (JsonElement item in e.EnumerateArray()) Track(item);
                break;
        }
        return _currentFile;
    }

    private static string Str(JsonElement e, string name) => e.TryGetProperty(name, out JsonElement v) ? v.GetString() ?? "" : "";

    private static string QualType(JsonElement e) => e.GetProperty("type").GetProperty("qualType").GetString()!;

    private static int Offset(JsonElement loc)
    {
        if (loc.TryGetProperty("expansionLoc", out JsonElement exp)) return Offset(exp);
        return loc.GetProperty("offset").GetInt32() + (loc.TryGetProperty("tokLen", out JsonElement t) ? t.GetInt32() : 0);
    }

    private static (int Begin, int End) Range(JsonElement decl)
    {
        JsonElement range = decl.GetProperty("range");
        JsonElement begin = range.GetProperty("begin");
        int b = begin.TryGetProperty("expansionLoc", out JsonElement exp)
            ? exp.GetProperty("offset").GetInt32()
            : begin.GetProperty("offset").GetInt32();
        return (b, Offset(range.GetProperty("end")));
    }

    private string Doc(JsonElement decl)
    {
        var (b, e) = Range(decl);
        return Comments.For(headerText, b, e);
    }

    private static IEnumerable<JsonElement> Inner(JsonElement e) =>
        e.TryGetProperty("inner", out JsonElement inner) ? inner.EnumerateArray() : [];

    private void ReadTopLevel(JsonElement decl)
    {
        string kind = Str(decl, "kind");
        string name = Str(decl, "name");
        var (begin, end) = Range(decl);
        switch (kind)
        {
            case "TypedefDecl":
                _typedefs.Add(new TypedefDecl(name, QualType(decl), begin, end));
                break;
            case "RecordDecl":
                if (Str(decl, "tagUsed") != "struct")
                    throw new BindingGenException($"{Str(decl, "tagUsed")} {name}: only structs may cross the ABI (no unions)");
                if (name.Length == 0) throw new BindingGenException($"an anonymous struct at offset {begin} of qlora.h: give it a name");
                if (!decl.TryGetProperty("completeDefinition", out _))
                {
                    if (!_opaqueTags.Contains(name)) _opaqueTags.Add(name);
                    break;
                }
                var fields = new List<(string, string, string)>();
                foreach (JsonElement f in Inner(decl))
                {
                    string fk = Str(f, "kind");
                    if (fk == "RecordDecl")
                        throw new BindingGenException($"struct {name}: nested struct definitions are not supported; declare it at file scope");
                    if (fk != "FieldDecl") continue;
                    if (f.TryGetProperty("isBitfield", out _))
                        throw new BindingGenException($"struct {name}: field {Str(f, "name")} is a bit-field; use a whole integer");
                    string fname = Str(f, "name");
                    if (fname.Length == 0) throw new BindingGenException($"struct {name}: anonymous members are not supported");
                    fields.Add((fname, QualType(f), Doc(f)));
                }
                if (fields.Count == 0) throw new BindingGenException($"struct {name} has no fields (C and C# disagree on the size of an empty struct)");
                _records.Add(new RecordDecl(name, fields, begin, end));
                break;
            case "EnumDecl":
                _enums.Add(ReadEnum(decl, name, begin, end));
                break;
            case "FunctionDecl":
                ReadFunction(decl, name, begin, end);
                break;
            case "VarDecl":
                throw new BindingGenException($"qlora.h declares the variable {name}; the ABI exports functions only");
        }
    }

    private EnumDecl ReadEnum(JsonElement decl, string name, int begin, int end)
    {
        string underlying = "int";
        if (decl.TryGetProperty("fixedUnderlyingType", out JsonElement fixedType))
            underlying = TypeMap.Primitive(CType.Parse(fixedType.GetProperty("qualType").GetString()!))
                         ?? throw new BindingGenException($"enum {name}: unsupported underlying type");
        var constants = new List<(string, long, string)>();
        long next = 0;
        foreach (JsonElement c in Inner(decl))
        {
            if (Str(c, "kind") != "EnumConstantDecl") continue;
            long value = ConstantValue(c) ?? next;
            constants.Add((Str(c, "name"), value, Doc(c)));
            next = value + 1;
        }
        if (underlying == "int" && constants.Any(c => c.Item2 is < int.MinValue or > int.MaxValue))
            throw new BindingGenException($"enum {name}: a value does not fit in int, so its size is compiler-specific");
        return new EnumDecl(name.Length == 0 ? null : name, underlying, constants, begin, end);
    }

    private static long? ConstantValue(JsonElement e)
    {
        foreach (JsonElement child in Inner(e))
        {
            if (Str(child, "kind") == "ConstantExpr" && child.TryGetProperty("value", out JsonElement v))
                return long.Parse(v.GetString()!, CultureInfo.InvariantCulture);
            if (ConstantValue(child) is { } nested) return nested;
        }
        return null;
    }

    private void ReadFunction(JsonElement decl, string name, int begin, int end)
    {
        if (_functions.Any(f => f.Name == name)) return; // a redeclaration
        bool exported = Inner(decl).Any(i => Str(i, "kind") == "VisibilityAttr" || Str(i, "kind") == "DLLExportAttr"
                                              || Str(i, "kind") == "DLLImportAttr");
        if (!exported) throw new BindingGenException($"function {name} is declared without QLORA_API");
        if (decl.TryGetProperty("variadic", out _))
            throw new BindingGenException($"function {name} is variadic; .NET cannot call variadic functions portably");
        if (Inner(decl).Any(i => Str(i, "kind") == "CompoundStmt"))
            throw new BindingGenException($"function {name} has a body in qlora.h; the header only declares the ABI");
        var parameters = Inner(decl).Where(i => Str(i, "kind") == "ParmVarDecl")
                                    .Select((p, i) => (Str(p, "name") is { Length: > 0 } n ? n : $"arg{i}", QualType(p)))
                                    .ToList();
        _functions.Add(new FunctionDecl(name, QualType(decl), parameters, begin, end));
    }

    private static CType ParseType(string qualType, string where)
    {
        try
        {
            return CType.Parse(qualType);
        }
        catch (FormatException e)
        {
            throw new BindingGenException($"{where}: {e.Message}");
        }
    }

    public AbiModel Build(string sha256, List<ConstantDef> macros)
    {
        CheckPrefixes();
        var structTypedef = new Dictionary<string, TypedefDecl>();
        var enumTypedef = new Dictionary<string, TypedefDecl>();
        var handles = new List<HandleDef>();
        var callbacks = new List<CallbackDef>();
        var aliases = new Dictionary<string, CType>();
        foreach (TypedefDecl t in _typedefs)
        {
            CType target = ParseType(t.QualType, $"typedef {t.Name}");
            string doc = Comments.For(headerText, t.Begin, t.End);
            switch (target)
            {
                case CType.Named { Name: var n } when n.StartsWith("struct ", StringComparison.Ordinal) && !_opaqueTags.Contains(n[7..]):
                    structTypedef[n[7..]] = t;
                    break;
                case CType.Named { Name: var n } when n.StartsWith("enum ", StringComparison.Ordinal):
                    enumTypedef[n[5..]] = t;
                    break;
                case CType.Pointer { Pointee: CType.Named { Name: var n } } when n.StartsWith("struct ", StringComparison.Ordinal)
                                                                                && _opaqueTags.Contains(n[7..]):
                    if (!t.Name.EndsWith("_t", StringComparison.Ordinal))
                        throw new BindingGenException($"handle typedef {t.Name} must end in _t (qlora_x_t)");
                    handles.Add(new HandleDef(t.Name, n[7..], Naming.Handle(t.Name), doc));
                    break;
                case CType.Pointer { Pointee: CType.Function fn }:
                    callbacks.Add(new CallbackDef(t.Name, Naming.Pascal(t.Name), fn, doc));
                    break;
                case CType.Named { Name: var n } when n.StartsWith("struct ", StringComparison.Ordinal):
                    throw new BindingGenException($"typedef {t.Name} names the incomplete struct {n}; only pointers to it (handles) can cross the ABI");
                default:
                    aliases[t.Name] = target;
                    break;
            }
        }

        var structs = _records.Select(r =>
        {
            structTypedef.TryGetValue(r.Tag, out TypedefDecl? td);
            string cName = td?.Name ?? "struct " + r.Tag;
            int begin = Math.Min(r.Begin, td?.Begin ?? int.MaxValue);
            var fields = r.Fields.Select(f => new FieldDef(f.Name, Naming.Pascal(f.Name),
                ParseType(f.QualType, $"{cName}.{f.Name}"), f.QualType, f.Doc)).ToList();
            string csName = Naming.Pascal(td?.Name ?? r.Tag);
            foreach (FieldDef f in fields.Where(f => f.CsName == csName))
                throw new BindingGenException($"{cName}.{f.CName}: a field may not be named like its struct in C#");
            return new StructDef(cName, r.Tag, csName, fields, Comments.For(headerText, begin, r.End));
        }).ToList();

        var enums = new List<EnumDef>();
        var constants = new List<ConstantDef>();
        foreach (EnumDecl e in _enums)
        {
            if (e.Tag is null)
            {
                constants.AddRange(e.Constants.Select(c => new ConstantDef(c.Name, c.Value, c.Doc)));
                continue;
            }
            enumTypedef.TryGetValue(e.Tag, out TypedefDecl? td);
            string cName = td?.Name ?? "enum " + e.Tag;
            var members = Naming.EnumMembers(e.Constants.Select(c => c.Name).ToList());
            int begin = Math.Min(e.Begin, td?.Begin ?? int.MaxValue);
            enums.Add(new EnumDef(cName, e.Tag, Naming.Pascal(td?.Name ?? e.Tag), e.Underlying,
                e.Constants.Select((c, i) => new EnumConstant(c.Name, members[i], c.Value, c.Doc)).ToList(),
                Comments.For(headerText, begin, e.End)));
        }
        constants.AddRange(macros);

        var functions = _functions.Select(f =>
        {
            if (ParseType(f.QualType, $"function {f.Name}") is not CType.Function fn)
                throw new BindingGenException($"function {f.Name}: unexpected type {f.QualType}");
            var ps = f.Params.Select(p => new ParamDef(p.Name, ParseType(p.QualType, $"{f.Name}({p.Name})"))).ToList();
            string ret = f.QualType[..f.QualType.IndexOf('(')].TrimEnd();
            string sig = $"{ret} {f.Name}({(f.Params.Count == 0 ? "void" : string.Join(", ", f.Params.Select(p => $"{p.QualType} {p.Name}")))})";
            return new FunctionDef(f.Name, fn.Return, ps, sig, Comments.For(headerText, f.Begin, f.End));
        }).ToList();

        return new AbiModel(sha256, enums, structs, handles, callbacks, functions, constants, aliases);
    }

    // The header's own convention (qlora.h's comment): one prefix for everything it declares.
    private void CheckPrefixes()
    {
        IEnumerable<(string What, string Name)> names =
            _typedefs.Select(t => ("typedef", t.Name))
                     .Concat(_records.Select(r => ("struct", r.Tag)))
                     .Concat(_opaqueTags.Select(t => ("struct", t)))
                     .Concat(_enums.Where(e => e.Tag is not null).Select(e => ("enum", e.Tag!)))
                     .Concat(_functions.Select(f => ("function", f.Name)));
        foreach (var (what, name) in names)
            if (!name.StartsWith("qlora_", StringComparison.Ordinal))
                throw new BindingGenException($"{what} {name} does not start with qlora_");
        foreach (var c in _enums.SelectMany(e => e.Constants))
            if (!c.Name.StartsWith("QLORA_", StringComparison.Ordinal))
                throw new BindingGenException($"enum constant {c.Name} does not start with QLORA_");
    }
}
